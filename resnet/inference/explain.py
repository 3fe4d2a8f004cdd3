"""Where a classifier looks: Grad-CAM (Selvaraju et al. 2017) heat maps through Captum's `LayerGradCam`.

The map is the ReLU of the layer's activations weighted by the spatially averaged gradient of the class score,
upsampled to the input (Captum's `LayerAttribution.interpolate`, bilinear). The default layer is the last stage
(conv5_x of ImageNet nets, conv4_x of CIFAR nets): the coarsest map with the most class-specific features, as in
Grad-CAM's own ResNet example. The image is prepared exactly as `resnet predict` prepares it (the checkpoint's
test protocol, centre view), and the overlay is drawn on that view.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from resnet.atomic import atomic_write


def find_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """(name, module): the last stage by default; a stage by the paper's name (conv4_x) or any module path
    (layer3, layer3.1.conv2); one line listing the stages otherwise."""
    stage_names = list(getattr(model, "stage_names", []))
    modules = [info["module"] for info in getattr(model, "feature_info", [])]
    if name is None:
        if not modules:
            raise ValueError("--layer: this network has no stages to default to; name a module")
        return stage_names[-1], model.get_submodule(modules[-1])
    if name in stage_names:
        return name, model.get_submodule(modules[stage_names.index(name)])
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        choices = ", ".join(f"{s} ({m})" for s, m in zip(stage_names, modules))
        raise ValueError(f"--layer {name}: no such layer; the stages are {choices}, or give a module path "
                         f"such as {modules[-1] if modules else 'layer4'}.0.conv1") from None


def grad_cam(model: nn.Module, x: torch.Tensor, target: int, layer: nn.Module) -> torch.Tensor:
    """The Grad-CAM map [H, W] of class `target` for one normalised input x [1, C, H, W], scaled to 0..1."""
    from captum.attr import LayerAttribution, LayerGradCam

    model = model.eval()
    with torch.enable_grad():
        cam = LayerGradCam(model, layer).attribute(x.requires_grad_(True), target=int(target),
                                                   relu_attributions=True)
    heat = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")[0, 0]
    heat = heat.clamp_min(0)
    top = float(heat.max())
    return heat / top if top > 0 else heat


def overlay(view: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5, scale: int = 1) -> np.ndarray:
    """An RGB uint8 picture [H, W, 3]: the view (0..1, grey or RGB) with the heat map (jet colours) over it,
    enlarged `scale` times (nearest) so that a 28-pixel image can be seen."""
    import matplotlib

    rgb = view.expand(3, -1, -1) if view.shape[0] == 1 else view[:3]
    colours = torch.from_numpy(matplotlib.colormaps["jet"](heat.numpy())[..., :3]).permute(2, 0, 1).float()
    mixed = ((1 - alpha) * rgb + alpha * colours).clamp(0, 1)
    picture = (mixed.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return picture.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else picture


def explain(classifier, images: list[str | Path], out: str | Path, target: int | None = None,
            layer: str | None = None) -> list[dict]:
    """Grad-CAM overlays of image files into folder `out` (NAME.gradcam.png), for the predicted class or
    `target`; returns [{image, out, class, index, probability, predicted, peak: [row, col]}]."""
    from PIL import Image

    from resnet.predict import gather_images, read_image

    net = classifier.net
    if not isinstance(net, nn.Module):
        raise ValueError(f"Grad-CAM needs the network's gradients: give the checkpoint the ONNX file came from, "
                         f"not {getattr(net, 'path', 'an ONNX file')}")
    layer_name, module = find_layer(net, layer)
    if target is not None and not 0 <= target < net.fc.out_features:
        raise ValueError(f"--class {target}: the network has classes 0 to {net.fc.out_features - 1}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in gather_images(images):
        view = classifier.prepare(read_image(path, classifier.channels, classifier.protocol.min_side))[:1]
        probs = classifier.probabilities(view[None])[0]
        predicted = int(probs.argmax())
        chosen = predicted if target is None else target
        x = classifier.norm(view.to(classifier.device)).float()
        heat = grad_cam(net.float(), x, chosen, module).cpu()
        picture = overlay(view[0].cpu(), heat, scale=max(1, 224 // view.shape[-1]))
        file = out / f"{Path(path).stem}.gradcam.png"
        atomic_write(file, lambda tmp: Image.fromarray(picture).save(tmp, format="PNG"))
        row, col = divmod(int(heat.argmax()), heat.shape[-1])
        [best] = classifier.top(probs, 1)
        results.append({"image": str(path), "out": str(file), "layer": layer_name, "index": chosen,
                        "class": classifier.classes[chosen] if classifier.classes else str(chosen),
                        "probability": float(probs[chosen]), "predicted": best, "peak": [row, col],
                        "size": list(heat.shape)})
    return results
