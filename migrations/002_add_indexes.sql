-- The bot's three common reads: a user's latest requests, the latest requests in a status,
-- and a guild's latest requests.
CREATE INDEX IF NOT EXISTS idx_video_requests_user_created ON video_requests (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_video_requests_status_created ON video_requests (status, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_video_requests_guild_created ON video_requests (guild_id, created_at DESC);
