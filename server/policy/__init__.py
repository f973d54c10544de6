"""Policy packs and their pure evaluation (host, site and organization scopes).

Public API; everything else in this package is detail. See docs/policy.md and policies/README.md.
"""

from server.policy.aggregate import HostContribution, ModelTotal, OrgAggregate, SiteAggregate
from server.policy.catalog import ChipMatch, classify_3a090
from server.policy.engine import PolicySet, identity_of, load_policy_set
from server.policy.errors import PackError
from server.policy.facts import HostContext, OrgFacts, SiteFacts
from server.policy.models import (
    ModelClassification,
    ModelRecord,
    ModelRegistry,
    ModelThresholds,
    classify_model,
)
from server.policy.pack import Condition, Pack
from server.policy.testing import PackTestReport, run_pack_tests

__all__ = [
    "ChipMatch",
    "Condition",
    "HostContext",
    "HostContribution",
    "ModelClassification",
    "ModelRecord",
    "ModelRegistry",
    "ModelThresholds",
    "ModelTotal",
    "OrgAggregate",
    "OrgFacts",
    "Pack",
    "PackError",
    "PackTestReport",
    "PolicySet",
    "SiteAggregate",
    "SiteFacts",
    "classify_3a090",
    "classify_model",
    "identity_of",
    "load_policy_set",
    "run_pack_tests",
]
