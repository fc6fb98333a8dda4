-- Closes what 0001's triggers left open (issue 12):
-- `INSERT OR REPLACE` deletes the old row as a conflict resolution, which
-- fires no DELETE trigger, so an existing row could be rewritten; and the
-- chain head could be moved, faked or replaced freely.

-- An insert must extend the log: never at or behind the head, never over
-- an existing row. BEFORE INSERT runs before REPLACE resolves its conflict.
CREATE TRIGGER audit_log_append_at_end BEFORE INSERT ON audit_log
WHEN NEW.seq <= (SELECT seq FROM audit_chain_head WHERE id = 1)
  OR EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: that seq is already written');
END;

-- The head is one row that only moves forward, onto the last row written
-- (or stays at the genesis hash while the log is empty).
CREATE TRIGGER audit_chain_head_no_insert BEFORE INSERT ON audit_chain_head
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_head has exactly one row');
END;
CREATE TRIGGER audit_chain_head_no_delete BEFORE DELETE ON audit_chain_head
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_head has exactly one row');
END;
CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE ON audit_chain_head
WHEN NEW.id IS NOT OLD.id
  OR NEW.seq < OLD.seq
  OR NOT (
        (NEW.seq = 0 AND NEW.hash = '0000000000000000000000000000000000000000000000000000000000000000')
     OR EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash))
  OR EXISTS (SELECT 1 FROM audit_log WHERE seq > NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_chain_head must move forward onto the last audit_log row and its hash');
END;
