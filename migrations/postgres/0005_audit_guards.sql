-- Closes what 0001's triggers left open (issue 12): an insert over an
-- existing row (refused by the primary key today, but only by accident of
-- the statement used), and a chain head that could be moved, faked,
-- deleted or truncated freely.

-- An insert must extend the log: never at or behind the head, never over
-- an existing row. BEFORE INSERT also runs first for INSERT ... ON CONFLICT.
CREATE FUNCTION audit_log_append_at_end() RETURNS trigger AS $$
BEGIN
    IF NEW.seq <= (SELECT seq FROM audit_chain_head WHERE id = 1)
       OR EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq) THEN
        RAISE EXCEPTION 'audit_log is append-only: seq % is already written', NEW.seq;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_append_at_end BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_at_end();

-- The head is one row that only moves forward, onto the last row written
-- (or stays at the genesis hash while the log is empty).
CREATE FUNCTION audit_chain_head_forward() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'audit_chain_head has exactly one row (% refused)', TG_OP;
    END IF;
    IF NEW.id <> OLD.id
       OR NEW.seq < OLD.seq
       OR NOT ((NEW.seq = 0 AND NEW.hash = '0000000000000000000000000000000000000000000000000000000000000000')
               OR EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash))
       OR EXISTS (SELECT 1 FROM audit_log WHERE seq > NEW.seq) THEN
        RAISE EXCEPTION 'audit_chain_head must move forward onto the last audit_log row and its hash';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_chain_head_forward BEFORE INSERT OR UPDATE OR DELETE ON audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION audit_chain_head_forward();
CREATE TRIGGER audit_chain_head_no_truncate BEFORE TRUNCATE ON audit_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_head_forward();
