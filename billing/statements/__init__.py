"""Tenant statements: a month's invoices and usage built from the read model (`statement`),
rendered as HTML, PDF and CSV, with the one Babel formatting module (`formatting`) and the SVG
charts (`charts`) the portal shares."""
