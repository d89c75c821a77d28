-- Payloads and metadata nested more than 100 levels deep are refused, as by
-- pgjobs/jsonlimits.py (MAX_JSON_DEPTH), whichever producer sends them: Python's decoder
-- fails a little below 1,000 levels and code that walks a decoded value far earlier, so
-- such a payload would poison every worker that claims it and every page that shows it.
CREATE OR REPLACE FUNCTION pgjobs_json_too_deep(v jsonb, max_depth integer DEFAULT 100)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    t text := v::text;
BEGIN
    -- Fewer brackets than levels allowed (the usual case) cannot be too deep.
    IF length(t) - length(translate(t, '[{', '')) <= max_depth THEN
        RETURN false;
    END IF;
    -- A container at level max_depth (the outermost value is level 0) nests one
    -- level too many; the walk stops at that level.
    RETURN jsonb_path_exists(
        v, format('strict $.**{%s} ? (@.type() == "object" || @.type() == "array")',
                  max_depth)::jsonpath);
END $$;

-- As in migration 5, with the depth checked before the size (as options.py does).
CREATE OR REPLACE FUNCTION pgjobs_option_object(what text, v jsonb, max_bytes integer)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    size bigint;
BEGIN
    IF v IS NULL OR v = 'null' THEN
        RETURN '{}';
    END IF;
    IF jsonb_typeof(v) <> 'object' THEN
        PERFORM pgjobs_invalid(format('%s must be a JSON object', what));
    END IF;
    IF pgjobs_json_too_deep(v) THEN
        PERFORM pgjobs_invalid(format('%s is nested too deeply (the limit is 100 levels)',
                                      what));
    END IF;
    size := octet_length(v::text);
    -- jsonb's text puts a space after every ':' and ','; Python measures compact JSON.
    -- The spaced text is never shorter, so only a payload near the limit is measured.
    IF size > max_bytes THEN
        SELECT size - coalesce(sum(CASE jsonb_typeof(n)
                                       WHEN 'object' THEN 2 * (SELECT count(*) FROM jsonb_object_keys(n)) - 1
                                       ELSE jsonb_array_length(n) - 1 END), 0)
        INTO size
        FROM jsonb_path_query(v, 'strict $.**') AS p(n)
        WHERE jsonb_typeof(n) IN ('object', 'array') AND n NOT IN ('{}', '[]');
        IF size > max_bytes THEN
            PERFORM pgjobs_invalid(format('%s is %s bytes; the limit is %s (JOBS_MAX_PAYLOAD_BYTES)',
                                          what, size, max_bytes));
        END IF;
    END IF;
    RETURN v;
END $$;
