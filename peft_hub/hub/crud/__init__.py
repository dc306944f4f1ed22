"""Database reads and writes, as keyword-only functions of a session.

Nothing here commits: the request's session commits once when the route
returns, so a publish (revision, files, tags, lineage) lands whole or not at all.
Callers use one surface, ``crud.X``; the parts live in the modules below.
"""

from __future__ import annotations

from peft_hub.hub.crud.accounts import (  # noqa: F401 - the crud surface
    add_member,
    count_namespaces,
    create_token,
    create_web_session,
    ensure_namespace,
    get_namespace,
    get_token,
    issue_token,
    list_tokens,
    resolve_web_session,
    revoke_token,
)
from peft_hub.hub.crud.adapters import (  # noqa: F401 - the crud surface
    MISS_HOOKS,
    SHA_RE,
    TAG_RE,
    count_download,
    create_adapter,
    delete_adapter,
    delete_tag,
    find_adapter,
    get_adapter,
    list_revisions,
    resolve_revision,
    revision_files,
    revision_history,
    set_tag,
    set_visibility,
    tags_of,
    validate_tag,
)
from peft_hub.hub.crud.facet_counts import facets  # noqa: F401 - the crud surface
from peft_hub.hub.crud.revisions import (  # noqa: F401 - the crud surface
    add_evals,
    delete_eval,
    lineage,
    list_evals,
    publish_revision,
)
from peft_hub.hub.crud.search import (  # noqa: F401 - the crud surface
    SORTS,
    main_revision_evals,
    referenced_blobs,
    search_adapters,
    search_filters,
    visible_clause,
)
from peft_hub.hub.crud.views import adapter_summary, revision_detail  # noqa: F401 - the crud surface
