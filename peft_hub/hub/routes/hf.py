"""The Hugging Face Hub–compatible API: point ``HF_ENDPOINT`` at the hub and
``huggingface_hub`` (and PEFT, transformers, vLLM, …) pull and push through it.

The routes live in :mod:`peft_hub.hub.hf`; see its docstring for how HF repos
map onto adapters.
"""

from fastapi import APIRouter

from peft_hub.hub.hf import lfs, listing, read, settings, write

router = APIRouter(tags=["huggingface"])
router.include_router(listing.router)
router.include_router(read.router)
router.include_router(write.router)
router.include_router(lfs.router)
router.include_router(settings.router)
