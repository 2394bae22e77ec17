"""Reconciliation: metered (Parquet) <-> invoiced (database) <-> collected (Stripe), per tenant and in total.

`waterfall` is the pure core that decides every difference; `service` gathers the facts (one
DuckDB scan group for all tenants, the ledger, Stripe); `report` writes text, CSV, HTML and JSON;
`cli` is the `reconcile` command of `wattmeter-billing`.
"""
