"""YOLOv5's loss, NMS (against the reference's output on the fixture) and COCO mAP through torchmetrics."""
import pytest
import torch
from torch.utils.data import DataLoader

from models import build_model
from models.yolov5 import YOLOv5
from policies.base import TrainState
from policies.manager import Manager
from utils.data.yolo import YoloDataset, collate, load_yolo_data, yolo_datasets
from utils.detection import DetectionMetric, DetectionTask, YoloLoss, non_max_suppression
from utils.paths import REPO_ROOT

FIXTURE = REPO_ROOT / "tests" / "models" / "fixtures" / "yolov5_reference.pt"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_nms_gives_the_references_detections():
    ref = torch.load(FIXTURE, weights_only=True)
    ours = non_max_suppression(ref["decoded"], **ref["nms_settings"])
    assert [len(d) for d in ours] == [len(d) for d in ref["nms"]]
    for mine, theirs in zip(ours, ref["nms"]):
        torch.testing.assert_close(mine, theirs)


def boxes_for(targets, image, size, *, shift=0.0, conf=0.9):
    t = targets[targets[:, 0] == image]
    xy, wh = t[:, 2:4] + shift, t[:, 4:6]
    return torch.cat((torch.cat((xy - wh / 2, xy + wh / 2), 1) * size, torch.full((len(t), 1), conf), t[:, 1:2]), 1)


def test_perfect_predictions_score_map_1_and_a_shifted_box_less():
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.2, 0.2], [0, 1, 0.2, 0.3, 0.1, 0.1], [1, 1, 0.7, 0.7, 0.3, 0.2]])
    perfect = DetectionMetric(2)
    perfect.update([boxes_for(targets, i, 64) for i in range(2)], targets, image_size=64)
    result = perfect.compute()
    assert result["map"] == pytest.approx(1.0) and result["map50"] == pytest.approx(1.0)
    assert result["ap_per_class"] == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}
    shifted = DetectionMetric(2)
    dets = [boxes_for(targets, i, 64) for i in range(2)]
    dets[1][0, :4] += 3.0                                  # one box off by 3 px
    shifted.update(dets, targets, image_size=64)
    assert 0 < shifted.compute()["map"] < 1.0


def test_the_loss_is_finite_positive_and_has_no_box_term_without_targets(yolo_tree):
    torch.manual_seed(0)
    model = build_model("yolov5n", num_classes=2)
    data = load_yolo_data(yolo_tree)
    train, _ = yolo_datasets(data, imgsz=64)
    images, targets = collate([train[i] for i in range(4)])
    loss_fn = YoloLoss(model.get_classifier(), imgsz=64)
    raw = model(images)
    loss = loss_fn(raw, targets)
    assert torch.isfinite(loss) and loss > 0 and set(loss_fn.last) == {"box", "obj", "cls"}
    loss.backward()
    assert model.model[0].conv.weight.grad.abs().sum() > 0
    no_targets = loss_fn([r.detach() for r in raw], targets[:0])
    assert torch.isfinite(no_targets) and loss_fn.last["box"] == 0.0


def test_a_detector_trains_with_the_shared_manager(yolo_tree):
    """Loss goes down over a few steps of the same loop classification uses; evaluation reports mAP."""
    torch.manual_seed(0)
    data = load_yolo_data(yolo_tree)
    _, val = yolo_datasets(data, imgsz=64)
    train = YoloDataset(data.splits["train"], num_classes=2, imgsz=64, augment=False)   # a steady target
    model = build_model("yolov5n", num_classes=2)
    loader = DataLoader(train, batch_size=4, shuffle=True, collate_fn=collate, generator=torch.Generator())
    test_loader = DataLoader(val, batch_size=4, collate_fn=collate)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = TrainState(model=model, forward_model=model, optimizer=optimizer, device=torch.device("cpu"),
                       steps_per_epoch=len(loader), num_epochs=8, seed=0)
    task = DetectionTask(model, imgsz=64)
    losses = []

    class Record:
        name = "record"

        def on_event(self, event, s):
            if event.value == "epoch_end":
                losses.append(s.metrics["train_loss"])

        def state_dict(self):
            return {}

    metrics = Manager(state=state, policies=[Record()], train_loader=loader, test_loader=test_loader, task=task).fit()
    assert losses[-1] < 0.9 * losses[0]
    assert {"map", "map50", "test_loss"} <= set(metrics) and 0.0 <= metrics["map"] <= 1.0


def test_eval_mode_outputs_decode_to_pixels():
    model = YOLOv5(num_classes=2, depth_multiple=0.33, width_multiple=0.0625).eval()
    with torch.no_grad():
        decoded, _ = model(torch.rand(1, 3, 64, 64))
    dets = non_max_suppression(decoded, conf_thres=0.0, iou_thres=0.99)
    assert dets[0].shape[1] == 6 and len(dets[0]) > 0
