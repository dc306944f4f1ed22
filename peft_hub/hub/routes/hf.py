"""The Hugging Face Hub–compatible API (placeholder until it lands)."""

from fastapi import APIRouter

router = APIRouter(tags=["huggingface"])
