"""Using trained networks: the paper's test protocols, top-k error, ensembles, layer responses."""

from resnet.evaluate.ensemble import ensemble_scores
from resnet.evaluate.metrics import ErrorMeter, topk_errors
from resnet.evaluate.preprocess import InputNorm, input_norm
from resnet.evaluate.protocols import PROTOCOLS, Protocol, get_protocol

__all__ = ["ErrorMeter", "InputNorm", "PROTOCOLS", "Protocol", "ensemble_scores", "get_protocol", "input_norm",
           "topk_errors"]
