"""The Hugging Face Hub–compatible API, so tools built on ``huggingface_hub``
(PEFT, transformers, vLLM, LoRAX, TGI, the ``hf`` CLI) pull from and push to
peft-hub when ``HF_ENDPOINT`` points at it.

It is a second door into the same registry: the same tokens, the same
visibility rules, the same blob store, and every push ends in
:func:`peft_hub.hub.publish.publish`, so it is validated exactly like
``peft-hub push``.

How the two models line up:

- An adapter ``owner/name`` is a model repo; a revision's 40-hex id is the
  commit sha; tags are refs. ``main`` always names the newest push.
- Every file is served as a Git LFS object: its sha256 is its ETag and its
  ``lfs.oid``, and its git oid is that of the LFS pointer.
- A commit is applied on top of ``main``'s files, then published whole.
- Small files travel inline in the commit (``uploadMode: regular``), so a
  client with ``hf_xet`` installed never needs Xet for them; larger ones go
  through the LFS basic transfer to a signed URL on the hub.
"""
