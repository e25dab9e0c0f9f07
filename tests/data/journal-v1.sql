-- A version-1 journal (dropforge before the attempts table), dumped with sqlite3's iterdump:
-- crashy.png running under a dead owner after its second claim (1/3 outputs), done.png done.
-- tests/test_journal.py loads it and sets PRAGMA user_version = 1, as that code did.
BEGIN TRANSACTION;
CREATE TABLE files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    inode TEXT NOT NULL, sha256 TEXT NOT NULL, seen_at REAL NOT NULL
);
CREATE TABLE folder_marks (
    inbox TEXT NOT NULL, folder TEXT NOT NULL, listing TEXT NOT NULL, near TEXT NOT NULL,
    watch TEXT NOT NULL, watched TEXT NOT NULL, parts TEXT NOT NULL, inputs INTEGER NOT NULL,
    PRIMARY KEY (inbox, folder)
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, inbox TEXT NOT NULL, input TEXT NOT NULL,
    kind TEXT NOT NULL, fingerprint TEXT NOT NULL, job_key TEXT NOT NULL, out_dir TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, waits INTEGER NOT NULL DEFAULT 0,
    error TEXT, not_before REAL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    started_at REAL, finished_at REAL, seconds REAL, lease_owner TEXT, lease_expires REAL,
    progress_done INTEGER NOT NULL DEFAULT 0, progress_total INTEGER NOT NULL DEFAULT 0,
    progress_note TEXT NOT NULL DEFAULT '', force INTEGER NOT NULL DEFAULT 0,
    deps TEXT NOT NULL DEFAULT '[]',
    UNIQUE (inbox, input)
);
INSERT INTO "jobs" VALUES(1,'/srv/inbox','crashy.png','image','fp1','key1','/srv/outbox/crashy','running',2,0,NULL,NULL,1000.0,1000.0,1000.0,NULL,NULL,'dead:1',1060.0,1,3,'step 4/20',0,'[]');
INSERT INTO "jobs" VALUES(2,'/srv/inbox','done.png','image','fp2','key2','/srv/outbox/done','done',1,0,NULL,NULL,1000.0,1000.0,1000.0,1000.0,2.0,NULL,NULL,0,0,'',0,'[]');
CREATE TABLE output_stamps (
    out_dir TEXT PRIMARY KEY, job_key TEXT NOT NULL, stamp TEXT NOT NULL
);
CREATE TABLE tables (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE verified_inputs (
    inbox TEXT NOT NULL, input TEXT NOT NULL, signature TEXT NOT NULL,
    PRIMARY KEY (inbox, input)
);
CREATE INDEX files_seen ON files (seen_at);
CREATE INDEX jobs_claim ON jobs (state, id);
CREATE INDEX jobs_state_updated ON jobs (state, updated_at);
CREATE TRIGGER folder_marks_insert AFTER INSERT ON jobs
    BEGIN DELETE FROM folder_marks WHERE inbox = NEW.inbox AND folder = rtrim(NEW.input, replace(NEW.input, '/', '')); END;
CREATE TRIGGER folder_marks_delete AFTER DELETE ON jobs
    BEGIN DELETE FROM folder_marks WHERE inbox = OLD.inbox AND folder = rtrim(OLD.input, replace(OLD.input, '/', '')); END;
CREATE TRIGGER folder_marks_update AFTER UPDATE OF inbox, input, state, fingerprint, job_key, out_dir, force, deps ON jobs
    BEGIN DELETE FROM folder_marks WHERE inbox = OLD.inbox AND folder = rtrim(OLD.input, replace(OLD.input, '/', '')); END;
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('jobs',2);
COMMIT;
