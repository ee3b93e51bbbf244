DROP TABLE oplog_job_run;
DROP TABLE oplog_agent;
