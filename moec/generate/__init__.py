"""`moec generate`: greedy or sampled generation through the KV cache of :mod:`moec.nn.cache`, timed.

:mod:`moec.generate.source` loads a model from a spec, a ``moec build`` folder or a Hugging Face
checkpoint folder (and finds its tokenizer.json); :mod:`moec.generate.loop` runs the prefill and the
decode steps, timing each and counting the distinct experts every MoE layer touches per step;
:mod:`moec.generate.render` prints the result in 80 columns. docs/decode.md describes the cache.

Importing this package imports torch.
"""

from moec.generate.loop import Generation, generate, next_tokens
from moec.generate.source import Loaded, load_source

__all__ = ["Generation", "Loaded", "generate", "load_source", "next_tokens"]
