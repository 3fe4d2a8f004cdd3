"""The `resnet` command: parses arguments, then calls the same functions as the Python API.

Each sub-command lives in a module with `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

COMMANDS = {
    "summary": ("resnet.commands.summary", "print a network's Table 1 view: stages, parameters, multiply-adds"),
    "eval": ("resnet.commands.eval", "top-1/top-5 error of checkpoints (and their ensemble): center, 10-crop, multi-scale"),
    "predict": ("resnet.commands.predict", "top-5 classes and probabilities of image files"),
    "export": ("resnet.commands.export", "ONNX export (BN folded, dynamic batch), checked against ONNX Runtime"),
    "convert": ("resnet.commands.convert", "import torchvision or timm ResNet weights as a checkpoint"),
    "weights": ("resnet.commands.weights", "list pretrained ImageNet weights by name (source, top-1, cached)"),
    "analyze": ("resnet.commands.analyze", "analyses of trained nets: layer responses (Fig. 7)"),
    "train": ("resnet.commands.train", "train a network with the paper's recipes"),
    "reproduce": ("resnet.commands.reproduce", "the paper's CIFAR experiments (Table 6, shortcuts, Fig. 7) with a report"),
    "data": ("resnet.commands.data", "get a dataset onto this machine (Fashion-MNIST: Debian package or download)"),
    "demo": ("resnet.commands.demo", "the degradation experiment in miniature (plain vs residual, two depths)"),
}


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given `argv`, only the named command's module is imported (torch loads only when needed)."""
    parser = argparse.ArgumentParser(prog="resnet", description="Deep residual networks (He et al., 2015).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, (module_path, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if chosen is None or chosen == name:
            module = importlib.import_module(module_path)
            p.description = (module.__doc__ or help_text).strip()
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def expected_failures() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a bad environment (not a bug): printed as one line, exit status 2."""
    import torch
    from safetensors import SafetensorError

    return (UserError, ValueError, OSError, ConnectionError, SafetensorError, torch.cuda.OutOfMemoryError)


def one_line(error: BaseException) -> str:
    """The error as one line; an OSError names its file ('PATH: No space left on device'), for a rename the target."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename2 or error.filename}: {error.strerror}"
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as e:
        print(f"resnet {args.command}: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except expected_failures() as e:
        print(f"resnet {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - anything else is a bug in resnet: show where, ask for a report
        traceback.print_exc()
        print(f"resnet {args.command}: internal error (a bug in resnet); please report it with the command line "
              f"and the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
