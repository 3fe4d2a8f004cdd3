"""Detection and instance segmentation on our backbones (Appendix A): Faster R-CNN with the paper's C4 split
or an FPN, Mask R-CNN with masks, all through torchvision.models.detection; COCO-format data and COCOeval.

Hooks for a training engine (the loop itself is not here):
- data:  `build_detection_data(data, data_dir, batch_size, seed, rank=0, world_size=1, ...)`
         -> (train_loader, {"val": val_loader}, info); loaders have len() and set_epoch(epoch, start_batch)
         and yield (list of image tensors [C,H,W] on 0..1, list of target dicts); `info.detector_options()`
         gives create_detector's num_classes, class_names, in_channels, min_size, max_size for the data.
- model: `create_detector(backbone, head, masks, num_classes, backbone_weights=..., trainable_stages=..., **options)`.
- loss:  `detection_loss(model, images, targets) -> (scalar, {name: loss})` (model in train mode).
- eval:  `evaluate_detector(model, loader_or_dataset, device=...) -> {"box_AP": ..., "box_AP50": ..., "mask_AP": ...}`.
- checkpoint: save with `resnet.checkpoint.save_weights(path, model, detector_meta(model))` (or
         `save_training_checkpoint(dir, step, model, detector_meta(model), state)`), read with `load_detector(path)`.
"""

from resnet.detection.models import (
    HEADS,
    build_detector,
    create_detector,
    detection_loss,
    detector_classes,
    detector_meta,
    is_detector_checkpoint,
    load_detector,
    load_torchvision_detector,
    save_detector,
)

__all__ = ["HEADS", "build_detector", "create_detector", "detection_loss", "detector_classes", "detector_meta",
           "is_detector_checkpoint", "load_detector", "load_torchvision_detector", "save_detector"]
