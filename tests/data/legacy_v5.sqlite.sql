BEGIN TRANSACTION;
CREATE TABLE adapter (
	id INTEGER NOT NULL, 
	owner VARCHAR(64) NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	private BOOLEAN NOT NULL, 
	downloads BIGINT NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	base_model VARCHAR, 
	method VARCHAR, 
	rank INTEGER, 
	max_rank INTEGER, 
	total_size BIGINT NOT NULL, 
	target_modules JSON, 
	description VARCHAR NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (owner, name)
);
INSERT INTO "adapter" VALUES(1,'lab','tiny-lora',1,6442450944,'2026-12-01 12:00:00.000000','2026-12-01 12:00:00.000000','tiny','lora',8,8,6442450944,'["q_proj", "v_proj"]','a tiny adapter');
CREATE TABLE auditevent (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	actor VARCHAR(64) NOT NULL, 
	action VARCHAR(32) NOT NULL, 
	target VARCHAR(300) NOT NULL, 
	client VARCHAR(64) NOT NULL, 
	detail JSON, 
	PRIMARY KEY (id)
);
INSERT INTO "auditevent" VALUES(1,'2026-12-01 12:00:00.000000','alice','push','lab/tiny-lora','127.0.0.1','{"revision": "dddddddddddddddddddddddddddddddddddddddd"}');
CREATE TABLE blob (
	sha256 VARCHAR(64) NOT NULL, 
	size BIGINT NOT NULL, 
	checked_mtime FLOAT, 
	corrupt BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	claimed_until DATETIME, 
	PRIMARY KEY (sha256)
);
INSERT INTO "blob" VALUES('eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee',6442450944,1.5,0,'2026-12-01 12:00:00.000000','2026-12-01 12:00:00.000000');
INSERT INTO "blob" VALUES('ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff',120,NULL,1,'2026-12-01 12:00:00.000000',NULL);
CREATE TABLE blobupload (
	sha256 VARCHAR(64) NOT NULL, 
	user_id INTEGER NOT NULL, 
	size BIGINT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (sha256, user_id), 
	FOREIGN KEY(user_id) REFERENCES namespace (id)
);
INSERT INTO "blobupload" VALUES('eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee',2,6442450944,'2026-12-01 12:00:00.000000');
CREATE TABLE eval (
	metric VARCHAR(128) NOT NULL, 
	value FLOAT NOT NULL, 
	dataset VARCHAR(256) NOT NULL, 
	dataset_version VARCHAR(128), 
	split VARCHAR(64), 
	extra JSON, 
	id INTEGER NOT NULL, 
	revision_id INTEGER NOT NULL, 
	added_by VARCHAR NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(revision_id) REFERENCES revision (id)
);
INSERT INTO "eval" VALUES('acc',0.5,'toy','1','test','{"n": 3}',1,1,'alice','2026-12-01 12:00:00.000000');
CREATE TABLE lineageedge (
	id INTEGER NOT NULL, 
	child_revision_id INTEGER NOT NULL, 
	position INTEGER NOT NULL, 
	parent_ref VARCHAR(300) NOT NULL, 
	parent_adapter_id INTEGER, 
	parent_revision VARCHAR(40), 
	parent_sha256 VARCHAR(64), 
	weight FLOAT, 
	method VARCHAR(32) NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(child_revision_id) REFERENCES revision (id), 
	FOREIGN KEY(parent_adapter_id) REFERENCES adapter (id)
);
INSERT INTO "lineageedge" VALUES(1,2,0,'lab/tiny-lora@cccccccccccccccccccccccccccccccccccccccc',1,'cccccccccccccccccccccccccccccccccccccccc','eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee',1.0,'linear');
CREATE TABLE membership (
	user_id INTEGER NOT NULL, 
	org_id INTEGER NOT NULL, 
	PRIMARY KEY (user_id, org_id), 
	FOREIGN KEY(user_id) REFERENCES namespace (id), 
	FOREIGN KEY(org_id) REFERENCES namespace (id)
);
INSERT INTO "membership" VALUES(2,3);
CREATE TABLE namespace (
	id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	kind VARCHAR(8) NOT NULL, 
	is_admin BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "namespace" VALUES(1,'admin','user',1,'2026-12-01 12:00:00.000000');
INSERT INTO "namespace" VALUES(2,'alice','user',0,'2026-12-01 12:00:00.000000');
INSERT INTO "namespace" VALUES(3,'lab','org',0,'2026-12-01 12:00:00.000000');
CREATE TABLE peft_hub_schema (version INTEGER NOT NULL);
INSERT INTO "peft_hub_schema" VALUES(1);
INSERT INTO "peft_hub_schema" VALUES(2);
INSERT INTO "peft_hub_schema" VALUES(3);
INSERT INTO "peft_hub_schema" VALUES(4);
INSERT INTO "peft_hub_schema" VALUES(5);
CREATE TABLE revision (
	id INTEGER NOT NULL, 
	adapter_id INTEGER NOT NULL, 
	sha VARCHAR(40) NOT NULL, 
	message VARCHAR NOT NULL, 
	author VARCHAR NOT NULL, 
	created_at DATETIME NOT NULL, 
	meta JSON, 
	broken JSON, 
	PRIMARY KEY (id), 
	UNIQUE (adapter_id, sha), 
	FOREIGN KEY(adapter_id) REFERENCES adapter (id)
);
INSERT INTO "revision" VALUES(1,1,'cccccccccccccccccccccccccccccccccccccccc','first','alice','2026-12-01 12:00:00.000000','{"peft_type": "LORA", "r": 8}',NULL);
INSERT INTO "revision" VALUES(2,1,'dddddddddddddddddddddddddddddddddddddddd','second','alice','2026-12-01 12:00:00.000000','{}','{"checked_at": "2026-12-01T12:00:00+00:00", "files": []}');
CREATE TABLE revisionfile (
	revision_id INTEGER NOT NULL, 
	path VARCHAR(255) NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	size BIGINT NOT NULL, 
	PRIMARY KEY (revision_id, path), 
	FOREIGN KEY(revision_id) REFERENCES revision (id)
);
INSERT INTO "revisionfile" VALUES(1,'adapter_model.safetensors','eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee',6442450944);
INSERT INTO "revisionfile" VALUES(2,'adapter_config.json','ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff',120);
CREATE TABLE tag (
	adapter_id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	revision_id INTEGER NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (adapter_id, name), 
	FOREIGN KEY(adapter_id) REFERENCES adapter (id), 
	FOREIGN KEY(revision_id) REFERENCES revision (id)
);
INSERT INTO "tag" VALUES(1,'main',2,'2026-12-01 12:00:00.000000');
CREATE TABLE token (
	id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	lookup VARCHAR(16) NOT NULL, 
	token_hash VARCHAR(64) NOT NULL, 
	scope VARCHAR(8) NOT NULL, 
	namespaces JSON, 
	created_at DATETIME NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	expires_at DATETIME, 
	last_used_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES namespace (id)
);
INSERT INTO "token" VALUES(1,1,'phub_adminlook','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','admin','null','2026-12-01 12:00:00.000000','bootstrap',NULL,'2026-12-01 12:00:00.000000');
INSERT INTO "token" VALUES(2,2,'phub_alicelook','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','write','["alice", "lab"]','2026-12-01 12:00:00.000000','ci','2026-12-01 12:00:00.000000',NULL);
CREATE TABLE websession (
	id_hash VARCHAR(64) NOT NULL, 
	token_id INTEGER NOT NULL, 
	csrf VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME NOT NULL, 
	PRIMARY KEY (id_hash), 
	FOREIGN KEY(token_id) REFERENCES token (id)
);
INSERT INTO "websession" VALUES('1111111111111111111111111111111111111111111111111111111111111111',2,'2222222222222222222222222222222222222222222222222222222222222222','2026-12-01 12:00:00.000000','2026-12-01 12:00:00.000000');
CREATE UNIQUE INDEX ix_namespace_name ON namespace (name);
CREATE INDEX ix_adapter_method ON adapter (method);
CREATE INDEX ix_adapter_name ON adapter (name);
CREATE INDEX ix_adapter_owner ON adapter (owner);
CREATE INDEX ix_adapter_updated_at ON adapter (updated_at);
CREATE INDEX ix_adapter_base_model ON adapter (base_model);
CREATE INDEX ix_auditevent_actor ON auditevent (actor);
CREATE INDEX ix_auditevent_at ON auditevent (at);
CREATE INDEX ix_auditevent_action ON auditevent (action);
CREATE UNIQUE INDEX ix_token_lookup ON token (lookup);
CREATE INDEX ix_token_user_id ON token (user_id);
CREATE INDEX ix_revision_adapter_id ON revision (adapter_id);
CREATE INDEX ix_revision_sha ON revision (sha);
CREATE INDEX ix_revisionfile_sha256 ON revisionfile (sha256);
CREATE INDEX ix_eval_revision_id ON eval (revision_id);
CREATE INDEX ix_lineage_parent ON lineageedge (parent_adapter_id);
CREATE INDEX ix_lineageedge_child_revision_id ON lineageedge (child_revision_id);
CREATE INDEX ix_websession_token_id ON websession (token_id);
COMMIT;
