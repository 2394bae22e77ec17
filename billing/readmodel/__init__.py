"""The read model: what the API, the portal, the statements and the reports read instead of the
minute Parquet. `hourly` builds the `usage_hourly` table from the lake; the queries over it live
beside it. Writes only its own tables; never prices anything (pricing questions go to
billing.pricing)."""
