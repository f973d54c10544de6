"""Only the fields an expression reads are converted into CEL values; a variable it uses whole
(a list handed to a macro, a method on it) is handed over whole, so verdicts do not change."""

from __future__ import annotations

from server.policy.cel import compile_expression

SAMPLE = {
    "host": {"nvml_ok": True, "id": "h"},
    "files": [{"encrypted": True, "path": "/a"}],
    "file": {"encrypted": True, "world_readable": False, "path": "/a"},
    "site": {"groups": ["eu"], "id": "s"},
}


def test_fields_read_through_a_variable_are_the_only_ones_converted() -> None:
    expr = compile_expression(
        "!('eu' in site.groups) || (file.encrypted && !file.world_readable)", SAMPLE
    )
    assert expr.root_fields == {
        "site": frozenset({"groups"}),
        "file": frozenset({"encrypted", "world_readable"}),
    }


def test_a_variable_used_whole_is_handed_over_whole() -> None:
    expr = compile_expression("files.all(f, f.encrypted) && host.nvml_ok", SAMPLE)
    assert "files" not in expr.root_fields and expr.root_fields["host"] == {"nvml_ok"}
    facts = dict(SAMPLE, files=[{"encrypted": True, "path": "/a"}, {"encrypted": False}])
    assert expr.holds(facts) is False
    assert expr.holds(dict(SAMPLE, host={"nvml_ok": True, "id": "other"})) is True
