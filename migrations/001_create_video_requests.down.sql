DROP TABLE IF EXISTS video_requests;
