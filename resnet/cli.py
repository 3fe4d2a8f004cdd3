"""The `resnet` command: parses arguments, then calls the same functions as the Python API.

Each sub-command lives in a module with `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback

from resnet.errors import expected_failures, one_line

COMMANDS = {
    "summary": ("resnet.commands.summary", "print a network's Table 1 view: stages, parameters, multiply-adds"),
    "eval": ("resnet.commands.eval", "top-1/top-5 error of checkpoints (and their ensemble): center, 10-crop, multi-scale"),
    "predict": ("resnet.commands.predict", "top-5 classes and probabilities of image files"),
    "explain": ("resnet.commands.explain", "Grad-CAM overlays: where a classifier looks for a class on each image"),
    "export": ("resnet.commands.export", "ONNX export (BN folded, dynamic batch), checked against ONNX Runtime"),
    "convert": ("resnet.commands.convert", "import torchvision or timm ResNet weights as a checkpoint"),
    "serve": ("resnet.commands.serve", "an HTTP API and web page for a trained network, with dynamic batching"),
    "weights": ("resnet.commands.weights", "list pretrained ImageNet weights by name (source, top-1, cached)"),
    "analyze": ("resnet.commands.analyze", "analyses of trained nets: layer responses (Fig. 7)"),
    "train": ("resnet.commands.train", "train a network with the paper's recipes"),
    "reproduce": ("resnet.commands.reproduce", "the paper's CIFAR experiments (Table 6, shortcuts, Fig. 7) with a report"),
    "data": ("resnet.commands.data", "get a dataset onto this machine (Fashion-MNIST: Debian package or download)"),
    "demo": ("resnet.commands.demo", "the degradation experiment in miniature (plain vs residual, two depths)"),
}


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


def rank() -> int:
    """This process's rank under torchrun ($RANK), 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


# what Gloo (and NCCL, through torch.distributed's DistError types) say when another process of the group is gone
LOST_PEER = re.compile(r"connection (reset|closed) by peer|broken pipe|read error|socket timeout|"
                       r"connection refused|NCCL communicator was aborted|remote process exited", re.IGNORECASE)


OUT_OF_MEMORY = re.compile(r"can't allocate memory|not enough memory", re.IGNORECASE)


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is torch.distributed's report that another rank died (a killed or crashed process)."""
    if world_size() < 2 or not isinstance(error, RuntimeError):
        return False
    import torch.distributed as dist

    return isinstance(error, getattr(dist, "DistError", ())) or bool(LOST_PEER.search(str(error)))


def lost_peer_line(args: argparse.Namespace, error: BaseException) -> str:
    """One line for a survivor: which rank was lost (with two processes, the other one), what Gloo/NCCL said, and
    that the last checkpoint on disk is kept (checkpoints are written by rank 0, atomically)."""
    size, me = world_size(), rank()
    lost = f"rank {1 - me} of 2" if size == 2 else f"another of the {size} ranks"
    said = " ".join(str(error).split())
    said = re.sub(r"^\[[^\]]*\]\s*", "", said).split(". ")[0][:160]  # its first sentence, no C++ source location
    run = getattr(args, "resume", None) or getattr(args, "out", None)
    resume = f"resnet {args.command} --resume {run}" if run else f"resnet {args.command} --resume RUN_DIR"
    return (f"resnet {args.command}: error: lost {lost} (torch.distributed: {said}); this rank stopped too; the "
            f"last checkpoint is kept: continue with torchrun ... {resume}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as e:
        print(f"resnet {args.command}: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except expected_failures() as e:
        if rank() == 0:  # under torchrun every rank meets the same bad input: say it once
            print(f"resnet {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"resnet {args.command}: error: out of memory; use a smaller --batch-size (or fewer --workers), or "
              f"free memory", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if OUT_OF_MEMORY.search(str(e)):  # torch's CPU allocator
            print(f"resnet {args.command}: error: out of memory ({one_line(e)[:200]}); use a smaller --batch-size, "
                  f"or free memory", file=sys.stderr)
            return 2
        if not lost_peer(e):
            return _internal_error(args)
        print(lost_peer_line(args, e), file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2)  # not through interpreter teardown: destroying a broken Gloo group aborts the process
    except Exception:  # noqa: BLE001 - anything else is a bug in resnet: show where, ask for a report
        return _internal_error(args)


def _internal_error(args: argparse.Namespace) -> int:
    """A bug in resnet: its traceback and a request for a report; exit status 1."""
    traceback.print_exc()
    print(f"resnet {args.command}: internal error (a bug in resnet); please report it with the command line "
          f"and the traceback above", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
