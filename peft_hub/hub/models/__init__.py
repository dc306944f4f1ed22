"""Database tables and API models (SQLModel).

Following SQLModel's rule, API models inherit only from data models, never
from table models: ``XBase`` holds shared fields, ``X(XBase, table=True)`` is
the table, and ``XPublic`` is what the API returns.

Every table is importable from here (``from peft_hub.hub.models import
Adapter``); importing this package registers them all on ``SQLModel.metadata``.
The modules are imported in the order the tables were defined when they were
one ``models.py``, since ``create_all`` emits tables that do not depend on
each other in that order: keep it, and add a new module's import at the end.
"""

# isort: off
from peft_hub.hub.models.base import name_key, pk, utcnow
from peft_hub.hub.models.accounts import Membership, Namespace, Token
from peft_hub.hub.models.adapters import (
    NO_RANK,
    Adapter,
    AdapterCount,
    AdapterOwnerCount,
    AdapterOwnerRankCount,
    AdapterTagCount,
    AdapterTagFacetCount,
)
from peft_hub.hub.models.revisions import (
    Eval,
    EvalBase,
    EvalCreate,
    EvalPublic,
    LineageEdge,
    Revision,
    RevisionFile,
    Tag,
)
from peft_hub.hub.models.sessions import AuditEvent, WebSession
from peft_hub.hub.models.blobs import Blob, BlobUpload
from peft_hub.hub.models.events import Deployment, Webhook, WebhookDelivery, WebhookEvent
# isort: on

__all__ = [
    "NO_RANK",
    "Adapter",
    "AdapterCount",
    "AdapterOwnerCount",
    "AdapterOwnerRankCount",
    "AdapterTagCount",
    "AdapterTagFacetCount",
    "AuditEvent",
    "Blob",
    "BlobUpload",
    "Deployment",
    "Eval",
    "EvalBase",
    "EvalCreate",
    "EvalPublic",
    "LineageEdge",
    "Membership",
    "Namespace",
    "Revision",
    "RevisionFile",
    "Tag",
    "Token",
    "WebSession",
    "Webhook",
    "WebhookDelivery",
    "WebhookEvent",
    "name_key",
    "pk",
    "utcnow",
]
