"""Object detection on the shared machinery: YOLOv5's loss, NMS, COCO mAP, and the Task the Manager runs.

The models are `models.yolov5`; YOLO-format data is `utils.data.yolo`.
"""
from utils.detection.loss import LossGains, YoloLoss, xywh_to_xyxy
from utils.detection.metrics import DetectionMetric
from utils.detection.postprocess import non_max_suppression
from utils.detection.task import DetectionTask, raw_outputs

__all__ = ["DetectionMetric", "DetectionTask", "LossGains", "YoloLoss", "non_max_suppression", "raw_outputs",
           "xywh_to_xyxy"]
