"""attn_tutorial: the companion package of the book *Attention, from intuition to translation*.

The package is flat: one module per idea, each with its own ``__all__``, every public name
re-exported here. Conventions used everywhere:

* batch first; heads are their own dimension: ``(batch, heads, seq, d_head)``;
* boolean masks, ``True`` = *may attend* (PyTorch's ``scaled_dot_product_attention`` convention);
* attention functions and modules return ``(output, weights)``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import errors
from .errors import *  # noqa: F403
from . import runtime
from .runtime import *  # noqa: F403
from . import data
from .data import *  # noqa: F403
from . import train
from .train import *  # noqa: F403
from . import kernel_regression
from .kernel_regression import *  # noqa: F403
from . import plotting
from .plotting import *  # noqa: F403
from . import widgets
from .widgets import *  # noqa: F403
from . import attention
from .attention import *  # noqa: F403
from . import multihead
from .multihead import *  # noqa: F403
from . import positional
from .positional import *  # noqa: F403
from . import numpy_ref
from .numpy_ref import *  # noqa: F403
from . import seq2seq
from .seq2seq import *  # noqa: F403
from . import transformer
from .transformer import *  # noqa: F403
from . import decoding
from .decoding import *  # noqa: F403
from . import efficient
from .efficient import *  # noqa: F403
from . import metrics
from .metrics import *  # noqa: F403
from . import configs
from .configs import *  # noqa: F403
from . import pretrained
from .pretrained import *  # noqa: F403
from . import cards
from .cards import *  # noqa: F403
from . import attention_explorer
from .attention_explorer import *  # noqa: F403

try:
    __version__ = version("attn-tutorial")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [*errors.__all__, *runtime.__all__, *data.__all__, *train.__all__, *kernel_regression.__all__, *plotting.__all__, *widgets.__all__, *attention.__all__, *multihead.__all__, *positional.__all__, *numpy_ref.__all__, *seq2seq.__all__, *transformer.__all__, *decoding.__all__, *metrics.__all__, *configs.__all__, *pretrained.__all__, *cards.__all__, *attention_explorer.__all__, *efficient.__all__]
