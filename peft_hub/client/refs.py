"""Adapter references: ``owner/name[@tag-or-revision]`` or a bare ``name``.

The parser lives in :mod:`peft_hub.refs`, shared with compose and the runtime.
"""

from peft_hub.refs import Ref, is_local, is_path_ref, parse_ref

__all__ = ["Ref", "is_local", "is_path_ref", "parse_ref"]
