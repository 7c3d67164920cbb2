-- nursery-worker schema version 5: the W3C trace context (``traceparent``, ``tracestate``) of the
-- span that deferred a job, so that its execution, in any process on any host, continues the trace.
-- NULL when tracing was off at defer time. (Version 4 is another change; versions apply in order.)
-- {schema} is replaced by the configured schema, quoted as an identifier.

ALTER TABLE {schema}.jobs ADD COLUMN trace_context jsonb;
