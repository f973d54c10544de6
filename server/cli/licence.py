"""``veu-server licence add DIR``: add an individual licence (a pack of status
``licence-condition``) to the policy directory, checked like a pack before anything is written.

The licence folder is loaded and validated like any pack, must be a ``licence-condition`` pack
attached to organizations or sites that exist (``--organization`` / ``--site`` attach it here,
adding to its ``applies_to``), its fixtures must pass, and the policy directory with it must load
as a whole. Only then is it copied into the policy directory and recorded for every verifier
process (server/compliance/policy_sync.py). Any failure leaves the directory and the database as
they were.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from server.cli._common import open_services
from server.config import shipped_policies_dir
from server.errors import Conflict, Invalid
from server.policy import PackError, load_policy_set
from server.policy.engine import read_pack_files
from server.policy.pack import Pack, load_pack
from server.policy.testing import run_pack_tests

ACTOR = "cli:licence"


def register(subparsers: Any) -> None:
    """``veu-server licence add``: wire into server/cli/__init__.py's subparsers."""
    group = subparsers.add_parser("licence", help="individual licences as licence-condition packs")
    sub = group.add_subparsers(dest="licence", required=True)
    p = sub.add_parser(
        "add",
        help="validate a licence pack, run its fixtures and add it to the policy directory",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument(
        "path", type=Path, help="the licence pack folder (pack.yaml, conditions.yaml...)"
    )
    p.add_argument(
        "--organization",
        action="append",
        default=[],
        help="attach the licence to this organization (id or name; repeatable)",
    )
    p.add_argument(
        "--site", action="append", default=[], help="attach it to this site (id or name)"
    )
    p.add_argument("--replace", action="store_true", help="replace a licence of the same id")
    p.add_argument("--policies", type=Path, help="policy directory (default: VEU_POLICIES_DIR)")
    p.add_argument("--data-dir", help="verifier data directory (env VEU_DATA_DIR)")
    p.add_argument("--database-url", help="verifier database (env VEU_DATABASE_URL)")
    p.set_defaults(func=cmd_add)


def _pack_error(
    exc: PackError, copies: tuple[Path, ...] = (), source: Path | None = None
) -> Invalid:
    """The error, naming the licence's own file rather than the staged copy that was loaded."""
    path = exc.path
    for copy in copies:
        if source is not None and path.is_relative_to(copy):
            path = source / path.relative_to(copy)
    return Invalid(exc.code, f"{path}:{exc.line}: {exc.detail}")


def _attach(pack_dir: Path, organizations: list[str], sites: list[str]) -> None:
    """Add these ids to the copy's ``applies_to`` (the ids it names stay, so its fixtures still
    judge what they were written for; comments of pack.yaml are not kept)."""
    path = pack_dir / "pack.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    applies = dict(doc.get("applies_to") or {})
    for key, ids in (("organizations", organizations), ("sites", sites)):
        if ids:
            applies[key] = [
                *(applies.get(key) or []),
                *[i for i in ids if i not in (applies.get(key) or [])],
            ]
    doc["applies_to"] = applies
    path.write_text(
        "# Written by veu-server licence add (attached to the given organizations/sites).\n"
        + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )


def cmd_add(args: argparse.Namespace) -> int:
    from server.compliance.policy_sync import reload_from_disk
    from server.store import repo

    source = Path(args.path)
    if source.is_file() and source.name == "pack.yaml":
        source = source.parent
    if not (source / "pack.yaml").is_file():
        raise Invalid("not_a_pack", f"{source} is not a pack folder (no pack.yaml in it)")
    opened = open_services(args)
    policies = Path(args.policies) if args.policies else opened.settings.policies_dir
    if policies.resolve() == shipped_policies_dir().resolve() and not args.policies:
        raise Invalid(
            "shipped_policies",
            "the verifier judges by the packs shipped with it; copy them to a directory of your "
            "own, set VEU_POLICIES_DIR to it (and restart serve), then add the licence there",
        )
    try:
        with tempfile.TemporaryDirectory(prefix="licence-", dir=opened.settings.data_dir) as tmp:
            staged = Path(tmp) / "policies"
            shutil.copytree(policies, staged, ignore=shutil.ignore_patterns("__pycache__"))
            incoming = Path(tmp) / "incoming"
            shutil.copytree(source, incoming, ignore=shutil.ignore_patterns("__pycache__"))
            with opened.db.read() as session:
                orgs = [repo.find_org(session, o).id for o in args.organization]
                sites = [repo.find_site(session, s).id for s in args.site]
            if orgs or sites:
                _attach(incoming, orgs, sites)
            try:
                pack = load_pack(incoming)
            except PackError as exc:
                raise _pack_error(exc, (incoming,), source) from exc
            if pack.status != "licence-condition":
                raise Invalid(
                    "not_a_licence",
                    f"pack {pack.id!r} has status {pack.status!r}; a licence is a pack of "
                    "status licence-condition (policies/README.md, 'Adding a licence')",
                )
            target = staged / pack.id
            if target.exists() and not args.replace:
                raise Conflict(
                    "licence_exists",
                    f"the policy directory already has a pack {pack.id!r}; give --replace to "
                    "replace it",
                )
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(incoming), str(target))
            try:
                pack = load_pack(target)
                report = run_pack_tests(target)
                load_policy_set(staged)
            except PackError as exc:
                raise _pack_error(exc, (target,), source) from exc
            if not (orgs or sites):
                _check_attached(opened, pack)
            if not report.ok:
                print("\n".join(report.lines()), file=sys.stderr)
                raise Invalid(
                    "licence_fixtures_failed",
                    f"the fixtures of licence {pack.id!r} do not pass (each condition must hold "
                    "in one case and fail in another)",
                )
            final = policies / pack.id
            if final.exists():
                shutil.rmtree(final)
            shutil.copytree(target, final)
        try:
            _, generation = reload_from_disk(
                opened.db,
                policies,
                opened.settings.data_dir,
                actor=ACTOR,
                now=datetime.now(UTC),
            )
        except PackError as exc:  # the directory changed under us: take the licence out again
            shutil.rmtree(policies / pack.id, ignore_errors=True)
            raise _pack_error(exc) from exc
    finally:
        opened.close()
    files = len([k for k in read_pack_files(policies) if k.startswith(f"{pack.id}/")])
    print(
        f"licence {pack.id} {pack.version}: {len(pack.conditions)} conditions, "
        f"{len(report.cases)} fixtures pass; {files} files in {policies / pack.id}; "
        f"recorded as policy generation {generation}",
        file=sys.stderr,
    )
    print(pack.id)
    return 0


def _check_attached(opened: Any, pack: Pack) -> None:
    """Every organization and site the licence names exists (when none was given to attach it
    to: then the licence must already name recorded ones)."""
    from server.store import repo

    with opened.db.read() as session:
        for org in pack.applies_to.organizations:
            repo.find_org(session, org)
        for site in pack.applies_to.sites:
            repo.find_site(session, site)
