"""sealong.loop: the self-improvement daemon (CLI, controller, stages, data sources, monitor).

Every sealong process is offline and quiet, whatever it imports first: the variables below are read by
huggingface_hub when it is imported (by transformers, peft, sentence-transformers or bitsandbytes), so they
are set here, before any of those. Nothing is downloaded at run time; a library's attempt to look something
up on a hub (bitsandbytes asks the hub for a CPU kernel on import on CPUs with AVX512-BF16) fails offline,
and its warning about that is not shown.
"""

import logging as _logging
import os as _os

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    _os.environ.setdefault(_name, _value)
# bitsandbytes' CPU backend and Hugging Face's `kernels` warn when the hub kernel cannot be had; the loop
# never uses it (NF4 falls back to bitsandbytes' own CPU code).
for _logger in ("bitsandbytes.backends.cpu.ops", "kernels"):
    _logging.getLogger(_logger).setLevel(_logging.ERROR)
