-- GA360 sessions -> (visitorId, contentId, session_duration): time spent on each item.
--
-- Standard SQL for BigQuery. Placeholders filled by preprocess/sources.py:
--   {table}          `PROJECT.DATASET.ga_sessions_*`
--   {table_filter}   TRUE; on wildcard tables a _TABLE_SUFFIX date range, and the
--                    ga_sessions_intraday_* tables left out unless --include_intraday
--   {hit_filter}     h.type = 'PAGE' (or TRUE for every hit type)
--   {item_join}      empty, or LEFT JOIN UNNEST(h.product) AS p ON TRUE   (productSKU)
--   {item}           the item expression, e.g. the custom dimension with index 10
--
-- Time on an item = time from its hit to the next later hit of the same session:
--   LEAD(hit_time) OVER (PARTITION BY fullVisitorId, visitNumber ORDER BY hit_time) - hit_time
-- over the distinct hit times of the session (so ties and duplicate rows are well defined).
-- Hits without an item still end the previous hit's time; the last hit of a session has none.
-- Durations are summed per (visitor, item) and only positive sums are kept.
--
-- first_date / last_date: the earliest and latest session `date` (YYYYMMDD, the export's own
-- day in the view's time zone) of the visitor's hits on the item; NULL when none of those
-- sessions has an 8-digit date. They do not change which rows or durations are returned.
WITH hit_rows AS (
  SELECT
    s.fullVisitorId AS visitorId,
    s.visitNumber AS visitNumber,
    h.time AS hit_time,
    {item} AS contentId,
    NULLIF(REGEXP_EXTRACT(s.date, '^[0-9]{{8}}$'), '') AS session_date
  FROM {table} AS s, UNNEST(s.hits) AS h {item_join}
  WHERE {table_filter} AND {hit_filter}
    -- rows the Beam readers count and drop as invalid are excluded here too
    AND s.fullVisitorId IS NOT NULL AND TRIM(s.fullVisitorId) != ''
    AND s.visitNumber IS NOT NULL
    AND h.time >= 0
),
session_hits AS (
  SELECT DISTINCT visitorId, visitNumber, hit_time, contentId FROM hit_rows
),
seen_dates AS (
  SELECT visitorId, contentId, MIN(session_date) AS first_date, MAX(session_date) AS last_date
  FROM hit_rows
  WHERE contentId IS NOT NULL
  GROUP BY visitorId, contentId
),
hit_durations AS (
  SELECT
    visitorId,
    visitNumber,
    hit_time,
    LEAD(hit_time) OVER (PARTITION BY visitorId, visitNumber ORDER BY hit_time) - hit_time AS duration
  FROM (SELECT DISTINCT visitorId, visitNumber, hit_time FROM session_hits)
),
durations AS (
  SELECT
    session_hits.visitorId AS visitorId,
    session_hits.contentId AS contentId,
    SUM(hit_durations.duration) AS session_duration
  FROM session_hits
  JOIN hit_durations
    ON session_hits.visitorId = hit_durations.visitorId
    AND session_hits.visitNumber = hit_durations.visitNumber
    AND session_hits.hit_time = hit_durations.hit_time
  WHERE session_hits.contentId IS NOT NULL AND TRIM(session_hits.contentId) != ''
  GROUP BY session_hits.visitorId, session_hits.contentId
  HAVING SUM(hit_durations.duration) > 0
)
SELECT d.visitorId, d.contentId, d.session_duration, sd.first_date, sd.last_date
FROM durations AS d
JOIN seen_dates AS sd ON d.visitorId = sd.visitorId AND d.contentId = sd.contentId
