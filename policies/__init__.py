"""The policy packs shipped with VEU Attest (YAML, one folder per pack; see README.md here).

A package only so that the packs travel inside the wheel as package data; the verifier judges by
them when ``VEU_POLICIES_DIR`` is unset (:func:`server.config.resolve_policies_dir`).
"""
