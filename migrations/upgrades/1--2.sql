-- Version 2: captured rows are written and read back in fixed formats.
--
-- Captured rows are stored as text (record_out) and read back with record_in. Under the
-- deleting session's DateStyle ('SQL, DMY'), extra_float_digits (< 1), IntervalStyle,
-- bytea_output or lc_monetary, the text did not read back as the same value (dates with
-- day and month swapped, floats cut). The capture functions and undo's entry points now
-- pin those settings for their duration.

ALTER FUNCTION softguard._capture_rows()
    SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' SET lc_monetary = 'C';
ALTER FUNCTION softguard._capture_truncate()
    SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' SET lc_monetary = 'C';
ALTER FUNCTION softguard._capture_column(bigint, oid, integer)
    SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' SET lc_monetary = 'C';
ALTER FUNCTION softguard._capture_type(bigint, oid, integer, text[])
    SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' SET lc_monetary = 'C';
ALTER FUNCTION softguard._capture_type_after(bigint, bigint)
    SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' SET lc_monetary = 'C';
ALTER FUNCTION softguard.undo_steps(bigint, text, boolean, text)
    SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' SET lc_monetary = 'C';
ALTER FUNCTION softguard.undo_op(bigint, text, boolean, text)
    SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' SET lc_monetary = 'C';
ALTER FUNCTION softguard.undo_op(bigint, text, boolean)
    SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 3
    SET bytea_output = 'hex' SET lc_monetary = 'C';
