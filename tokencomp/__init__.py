"""TokenComp: cut a VLM's visual tokens to a budget with ID-Pruner, ITG or a peer method.

    import tokencomp
    out = tokencomp.compress(tokens, budget=64, method="id_pruner", cls_attn=attn)  # tokens [576, D]
    out.tokens  # [64, D]; out.index: kept positions; out.assignment: merge map for generating methods
    tokencomp.methods.available()
"""

from tokencomp._compat import patch_torchvision

patch_torchvision()

from tokencomp import methods
from tokencomp.base import Compressed, Signals
from tokencomp.compress import compress

__all__ = ["Compressed", "Signals", "compress", "methods"]
__version__ = "0.1.0"
