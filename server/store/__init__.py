"""Storage: typed models, migrations, and the queries the verifier runs."""
