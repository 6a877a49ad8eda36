"""YOLOv5's mosaic: tiles around the centre, scale and shift back to S, boxes on their objects, crops dropped."""
import pytest
import torch

from tests.detection.conftest import COLOURS
from utils.data.yolo import YoloDataset, load_yolo_data
from utils.data.yolo_augment import PAD_VALUE, box_candidates, scale_translate, tile4

S = 32


def solid(value: float, h: int, w: int) -> torch.Tensor:
    return torch.full((3, h, w), value)


def test_tiles_meet_at_the_centre_with_their_boxes():
    images = [solid(0.1 * (k + 1), 32, 24) for k in range(4)]     # longest side S, portrait
    boxes = [torch.tensor([[k, 0.0, 0.0, 24.0, 32.0]]) for k in range(4)]   # each box covers its whole image
    canvas, out = tile4(images, boxes, S, centre=(30, 40))
    assert canvas.shape == (3, 64, 64)
    # top-left tile ends at the centre, top-right starts there, and so on
    assert canvas[0, 39, 29] == pytest.approx(0.1) and canvas[0, 39, 30] == pytest.approx(0.2)
    assert canvas[0, 40, 29] == pytest.approx(0.3) and canvas[0, 40, 30] == pytest.approx(0.4)
    assert canvas[0, 0, 0] == pytest.approx(PAD_VALUE) and canvas[0, 63, 63] == pytest.approx(PAD_VALUE)
    assert out.tolist() == [[0, 6, 8, 30, 40], [1, 30, 8, 54, 40], [2, 6, 40, 30, 64], [3, 30, 40, 54, 64]]


def test_scale_one_shift_half_is_the_central_crop():
    canvas = torch.rand(3, 2 * S, 2 * S)
    boxes = torch.tensor([[0, 20.0, 20.0, 40.0, 44.0], [1, 0.0, 0.0, 10.0, 10.0]])
    out, kept = scale_translate(canvas, boxes, S, scale=1.0, shift=(S / 2, S / 2))
    assert torch.equal(out, canvas[:, S // 2:S // 2 + S, S // 2:S // 2 + S])
    assert kept.tolist() == [[0, 4, 4, 24, 28]], "the box outside the crop is dropped, the other moves with it"


def test_scale_and_shift_move_boxes_with_their_pixels():
    canvas = torch.full((3, 2 * S, 2 * S), 0.2)
    canvas[:, 24:40, 28:44] = 0.9
    boxes = torch.tensor([[0, 28.0, 24.0, 44.0, 40.0]])
    out, kept = scale_translate(canvas, boxes, S, scale=0.75, shift=(14.0, 18.0))
    (_, x1, y1, x2, y2), = kept.tolist()
    assert (x2 - x1, y2 - y1) == (12, 12)
    assert torch.allclose(out[:, int(y1) + 1:int(y2) - 1, int(x1) + 1:int(x2) - 1], torch.tensor(0.9), atol=1e-5)
    assert out[0, int(y1) - 2, int(x1)] == pytest.approx(0.2, abs=1e-5)


def test_box_candidates_are_yolov5s_rule():
    before = torch.tensor([[0, 0, 20, 20], [0, 0, 20, 20], [0, 0, 20, 20], [0, 0, 300, 2.5]], dtype=torch.float32)
    after = torch.tensor([[0, 0, 20, 10], [0, 0, 20, 1.5], [0, 0, 6, 6], [0, 0, 300, 2.5]], dtype=torch.float32)
    assert box_candidates(before, after).tolist() == [True, False, False, False]  # thin; < 10% area; aspect >= 100


def test_mosaic_samples_keep_boxes_on_their_objects(yolo_tree, monkeypatch):
    import utils.data.yolo as yolo

    monkeypatch.setattr(yolo, "hsv_jitter", lambda images: images)
    data = load_yolo_data(yolo_tree)
    train = YoloDataset(data.splits["train"], num_classes=2, imgsz=64, augment=True, mosaic=1.0)
    plain = YoloDataset(data.splits["train"], num_classes=2, imgsz=64, augment=True)
    checked = boxes_seen = 0
    for seed in range(6):
        torch.manual_seed(seed)
        batch = train.__getitems__(list(range(len(train))))
        torch.manual_seed(seed)
        assert not torch.equal(batch[0][0], plain[0][0])
        for image, boxes in batch:
            assert image.shape == (3, 64, 64) and ((boxes[:, 1:] >= 0) & (boxes[:, 1:] <= 1)).all()
            boxes_seen += len(boxes)
            rows = boxes.tolist()
            for k, (cls, cx, cy, w, h) in enumerate(rows):
                if w * 64 < 4 or h * 64 < 4 or any(abs(cx - x) < bw / 2 and abs(cy - y) < bh / 2
                                                   for _, x, y, bw, bh in rows[k + 1:]):
                    continue            # a sliver, or a box drawn later paints over this centre
                inside = image[:, min(int(cy * 64), 63), min(int(cx * 64), 63)] * 255
                assert torch.allclose(inside, torch.tensor(COLOURS[int(cls)], dtype=torch.float32), atol=50)
                checked += 1
    assert checked > 30 and boxes_seen / (6 * len(train)) > 1.0, "four images' boxes per sample, some cropped"
    torch.manual_seed(3)
    a = train[2]
    torch.manual_seed(3)
    b = train[2]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_validation_never_mosaics(yolo_tree):
    data = load_yolo_data(yolo_tree)
    val = YoloDataset(data.splits["val"], num_classes=2, imgsz=64, augment=False, mosaic=1.0)
    assert val.mosaic == 0.0


def test_mosaic_for_a_classifier_is_one_line_naming_the_trainer_config(tmp_path, capsys):
    import main

    trainer = tmp_path / "trainer.yaml"
    trainer.write_text("epochs: 1\nbatch_size: 8\noptimizer: {name: sgd, lr: 0.01}\nmosaic: 1.0\n")
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--dset", "synthetic", "--config_path", str(trainer), "--arch", "resnet_small", "--image_size", "16",
                   "--workers", "0", "--experiment_root_path", str(tmp_path / "exp"), "--no_progress"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert f"{trainer}: 'mosaic: 1.0' is detection augmentation" in err
