"""Finalized invoices and the audit log are guarded by the database itself.

Triggers refuse any change to an invoice that is not a draft (except finalized -> void,
which may set only status, voided_ms and void_reason), any change to its lines, and any
UPDATE or DELETE of the audit log, on SQLite and on PostgreSQL alike.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FROZEN_COLUMNS = (
    "tenant_id",
    "period",
    "period_start_ms",
    "period_end_ms",
    "number",
    "currency",
    "subtotal",
    "tax",
    "total",
    "credits_applied",
    "amount_due",
    "content_hash",
    "usage_cutoff",
    "rated_ms",
    "finalized_ms",
)
INVOICE_MESSAGE = "invoice is issued: it never changes (void it with a reason instead)"
LINES_MESSAGE = "the lines of an issued invoice never change"
AUDIT_MESSAGE = "the audit log is append-only"


def _sqlite_upgrade() -> None:
    same = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in FROZEN_COLUMNS)
    voiding = f"OLD.status = 'finalized' AND NEW.status = 'void' AND {same}"
    op.execute(f"""
        CREATE TRIGGER invoices_immutable BEFORE UPDATE ON invoices
        WHEN OLD.status <> 'draft' AND NOT ({voiding})
        BEGIN SELECT RAISE(ABORT, '{INVOICE_MESSAGE}'); END""")
    op.execute(f"""
        CREATE TRIGGER invoices_no_delete BEFORE DELETE ON invoices WHEN OLD.status <> 'draft'
        BEGIN SELECT RAISE(ABORT, '{INVOICE_MESSAGE}'); END""")
    for event, row in (("UPDATE", "OLD"), ("DELETE", "OLD"), ("INSERT", "NEW")):
        op.execute(f"""
            CREATE TRIGGER invoice_lines_immutable_{event.lower()} BEFORE {event} ON invoice_lines
            WHEN (SELECT status FROM invoices WHERE id = {row}.invoice_id) <> 'draft'
            BEGIN SELECT RAISE(ABORT, '{LINES_MESSAGE}'); END""")
    for event in ("UPDATE", "DELETE"):
        op.execute(f"""
            CREATE TRIGGER audit_log_append_only_{event.lower()} BEFORE {event} ON audit_log
            BEGIN SELECT RAISE(ABORT, '{AUDIT_MESSAGE}'); END""")


def _postgresql_upgrade() -> None:
    new = ", ".join(f"NEW.{c}::text" for c in FROZEN_COLUMNS)
    old = ", ".join(f"OLD.{c}::text" for c in FROZEN_COLUMNS)
    op.execute(f"""
        CREATE FUNCTION wattmeter_invoice_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF OLD.status <> 'draft' THEN
            IF TG_OP = 'UPDATE' AND OLD.status = 'finalized' AND NEW.status = 'void'
               AND ROW({new}) IS NOT DISTINCT FROM ROW({old}) THEN
              RETURN NEW;
            END IF;
            RAISE EXCEPTION '{INVOICE_MESSAGE}' USING ERRCODE = 'integrity_constraint_violation';
          END IF;
          IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
          RETURN NEW;
        END $$""")
    op.execute("""
        CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
        FOR EACH ROW EXECUTE FUNCTION wattmeter_invoice_guard()""")
    op.execute(f"""
        CREATE FUNCTION wattmeter_invoice_lines_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE parent_status text;
        BEGIN
          SELECT status INTO parent_status FROM invoices
           WHERE id = CASE WHEN TG_OP = 'INSERT' THEN NEW.invoice_id ELSE OLD.invoice_id END;
          IF parent_status <> 'draft' THEN
            RAISE EXCEPTION '{LINES_MESSAGE}' USING ERRCODE = 'integrity_constraint_violation';
          END IF;
          IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
          RETURN NEW;
        END $$""")
    op.execute("""
        CREATE TRIGGER invoice_lines_immutable BEFORE INSERT OR UPDATE OR DELETE ON invoice_lines
        FOR EACH ROW EXECUTE FUNCTION wattmeter_invoice_lines_guard()""")
    op.execute(f"""
        CREATE FUNCTION wattmeter_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '{AUDIT_MESSAGE}' USING ERRCODE = 'integrity_constraint_violation'; END $$""")
    op.execute("""
        CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION wattmeter_append_only()""")


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        _postgresql_upgrade()
    else:
        _sqlite_upgrade()


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute("DROP TRIGGER invoice_lines_immutable ON invoice_lines")
        op.execute("DROP TRIGGER invoices_immutable ON invoices")
        for function in ("wattmeter_append_only", "wattmeter_invoice_lines_guard", "wattmeter_invoice_guard"):
            op.execute(f"DROP FUNCTION {function}()")
        return
    for trigger in (
        "invoices_immutable",
        "invoices_no_delete",
        "invoice_lines_immutable_update",
        "invoice_lines_immutable_delete",
        "invoice_lines_immutable_insert",
        "audit_log_append_only_update",
        "audit_log_append_only_delete",
    ):
        op.execute(f"DROP TRIGGER {trigger}")
