"""Turn ``A+B+C`` arguments into local adapter directories (no torch).

The rule (local only when written as a path; ``name`` and ``owner/name``
always the hub) and the parser live in :mod:`peft_hub.refs`, shared with
the client and the runtime.
"""

from peft_hub.refs import ResolvedRef, default_output, resolve_ref, split_refs

__all__ = ["ResolvedRef", "default_output", "resolve_ref", "split_refs"]
