-- GA4 events -> (visitorId, contentId, session_duration): time spent on each item, in ms.
--
-- Standard SQL for BigQuery (the same text runs in DuckDB for the tests). Placeholders filled
-- by preprocess/ga4.py:
--   {table}             `PROJECT.DATASET.events_*`
--   {table_filter}      TRUE; on wildcard tables a _TABLE_SUFFIX date range, and the
--                       events_intraday_* tables left out unless --include_intraday
--   {visitor}           e.user_pseudo_id (or e.user_id, --user_id_field)
--   {item}, {item_join} the item expression (--item_source), e.g. page_location without its
--                       query string and fragment; LEFT JOIN UNNEST(e.items) for item_id
--   {event_filter}      TRUE, or e.event_name IN (...) (--event_names)
--   {duration}          engagement_time or next_event (--duration): which durations to return
--
-- An event param is read as MAX(value.<type>_value) over the params with that key (the
-- export never repeats a key; MAX makes a repeated one well defined). A session is
-- (visitor, ga_session_id); events without visitor, session or a valid timestamp are left
-- out, as the Beam reader counts and drops them. Duplicate events (same visitor, session,
-- timestamp, name, item and engagement time) count once.
--
-- first_date / last_date: the earliest and latest `event_date` (YYYYMMDD, the export's own
-- day in the property's reporting time zone) of the visitor's valid events on the item
-- (engagement_time: those whose engagement time counts); NULL when none has an 8-digit date.
WITH events AS (
  SELECT
    {visitor} AS visitorId,
    (SELECT MAX(p.value.int_value) FROM UNNEST(e.event_params) AS p WHERE p.key = 'ga_session_id') AS sessionId,
    e.event_timestamp AS event_time,
    e.event_name AS event_name,
    {item} AS contentId,
    (SELECT MAX(p.value.int_value) FROM UNNEST(e.event_params) AS p WHERE p.key = 'engagement_time_msec') AS engagement,
    NULLIF(REGEXP_EXTRACT(e.event_date, '^[0-9]{{8}}$'), '') AS event_date
  FROM {table} AS e {item_join}
  WHERE {table_filter} AND {event_filter}
),
valid_dated_events AS (
  SELECT *
  FROM events
  WHERE visitorId IS NOT NULL AND TRIM(visitorId) != ''
    AND sessionId IS NOT NULL
    AND event_time IS NOT NULL AND event_time >= 0
),
valid_events AS (
  SELECT DISTINCT visitorId, sessionId, event_time, event_name, contentId, engagement
  FROM valid_dated_events
),
seen_dates AS (
  SELECT visitorId, contentId, MIN(event_date) AS first_date, MAX(event_date) AS last_date
  FROM valid_dated_events
  WHERE contentId IS NOT NULL
    AND ('{duration}' = 'next_event' OR engagement IS NULL OR engagement >= 0)
  GROUP BY visitorId, contentId
),
-- engagement_time: GA4's own measure, the sum of the engagement_time_msec param over the
-- item's events (events without it add nothing; events with a negative one are left out).
engagement_time_durations AS (
  SELECT visitorId, contentId, SUM(engagement) AS session_duration
  FROM valid_events
  WHERE contentId IS NOT NULL AND TRIM(contentId) != ''
    AND (engagement IS NULL OR engagement >= 0)
  GROUP BY visitorId, contentId
  HAVING SUM(engagement) > 0
),
-- next_event: the UA semantics. An event lasts until the next later event of its session,
-- over the session's distinct event times (microseconds); events without an item still end
-- the previous one; the last event has none. Summed per (visitor, item), then in ms.
event_gaps AS (
  SELECT
    visitorId, sessionId, event_time,
    LEAD(event_time) OVER (PARTITION BY visitorId, sessionId ORDER BY event_time) - event_time AS gap
  FROM (SELECT DISTINCT visitorId, sessionId, event_time FROM valid_events)
),
item_events AS (
  SELECT DISTINCT visitorId, sessionId, event_time, contentId
  FROM valid_events
  WHERE contentId IS NOT NULL AND TRIM(contentId) != ''
),
next_event_durations AS (
  SELECT i.visitorId AS visitorId, i.contentId AS contentId, SUM(g.gap) / 1000 AS session_duration
  FROM item_events AS i
  JOIN event_gaps AS g
    ON i.visitorId = g.visitorId AND i.sessionId = g.sessionId AND i.event_time = g.event_time
  GROUP BY i.visitorId, i.contentId
  HAVING SUM(g.gap) > 0
)
SELECT d.visitorId, d.contentId, d.session_duration, sd.first_date, sd.last_date
FROM {duration}_durations AS d
JOIN seen_dates AS sd ON d.visitorId = sd.visitorId AND d.contentId = sd.contentId
