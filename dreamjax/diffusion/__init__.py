"""Masked-diffusion objective and sampler for Dream / Dream-VL (spec §4, §5).

* :mod:`dreamjax.diffusion.objective`: forward process, shifted targets, CART / 1/p / linear weights, the
  token-mean loss and ``loss_fn`` for a train step (the SFT maskable set is built by the data side:
  :mod:`dreamjax.data.sft_labels`);
* :mod:`dreamjax.diffusion.schedule`: the sampler's float32 time schedule, bit-identical to the reference;
* :mod:`dreamjax.diffusion.sampler`: the compiled ``diffusion_generate`` loop and output helpers
  (``DreamVL.generate`` is the user-facing entry).

Depends on :mod:`dreamjax.models` only (DESIGN.md).
"""

from dreamjax.diffusion.objective import (IGNORE_INDEX, WEIGHTINGS, cart_weights, forward_process, loss_fn,
                                          masked_diffusion_loss, shift_targets, token_nll, token_weights)
from dreamjax.diffusion.sampler import (ALGS, SamplerSettings, cut_at_stop, decode_generated, default_stop_ids,
                                        diffusion_generate, make_canvas)
from dreamjax.diffusion.schedule import timesteps, transfer_fractions

__all__ = [
    "ALGS", "IGNORE_INDEX", "WEIGHTINGS", "SamplerSettings", "cart_weights",
    "cut_at_stop", "decode_generated", "default_stop_ids", "diffusion_generate", "forward_process", "loss_fn",
    "make_canvas", "masked_diffusion_loss", "shift_targets", "timesteps", "token_nll",
    "token_weights", "transfer_fractions",
]
