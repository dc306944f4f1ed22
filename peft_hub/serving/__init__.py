"""Serving adapters from the hub in vLLM: a LoRA resolver and a rollout receiver.

The hub-side logic (``resolve``, ``receiver``) needs only the client part of
peft-hub; the vLLM glue (``vllm``) imports vLLM, and only vLLM loads it.
"""
