--
-- PostgreSQL database dump
--


-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: adapter; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.adapter (
    id integer NOT NULL,
    owner character varying(64) NOT NULL,
    name character varying(64) NOT NULL,
    private boolean NOT NULL,
    downloads bigint NOT NULL,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    base_model character varying,
    method character varying,
    rank integer,
    max_rank integer,
    total_size bigint NOT NULL,
    target_modules json,
    description character varying NOT NULL
);


--
-- Name: adapter_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.adapter_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: adapter_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.adapter_id_seq OWNED BY public.adapter.id;


--
-- Name: auditevent; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.auditevent (
    id integer NOT NULL,
    at timestamp with time zone NOT NULL,
    actor character varying(64) NOT NULL,
    action character varying(32) NOT NULL,
    target character varying(300) NOT NULL,
    client character varying(64) NOT NULL,
    detail json
);


--
-- Name: auditevent_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.auditevent_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: auditevent_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.auditevent_id_seq OWNED BY public.auditevent.id;


--
-- Name: blob; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.blob (
    sha256 character varying(64) NOT NULL,
    size bigint NOT NULL,
    checked_mtime double precision,
    corrupt boolean NOT NULL,
    created_at timestamp with time zone NOT NULL,
    claimed_until timestamp with time zone
);


--
-- Name: blobupload; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.blobupload (
    sha256 character varying(64) NOT NULL,
    user_id integer NOT NULL,
    size bigint NOT NULL,
    created_at timestamp with time zone NOT NULL
);


--
-- Name: eval; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.eval (
    metric character varying(128) NOT NULL,
    value double precision NOT NULL,
    dataset character varying(256) NOT NULL,
    dataset_version character varying(128),
    split character varying(64),
    extra json,
    id integer NOT NULL,
    revision_id integer NOT NULL,
    added_by character varying NOT NULL,
    created_at timestamp with time zone NOT NULL
);


--
-- Name: eval_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.eval_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: eval_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.eval_id_seq OWNED BY public.eval.id;


--
-- Name: lineageedge; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.lineageedge (
    id integer NOT NULL,
    child_revision_id integer NOT NULL,
    "position" integer NOT NULL,
    parent_ref character varying(300) NOT NULL,
    parent_adapter_id integer,
    parent_revision character varying(40),
    parent_sha256 character varying(64),
    weight double precision,
    method character varying(32) NOT NULL
);


--
-- Name: lineageedge_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.lineageedge_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: lineageedge_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.lineageedge_id_seq OWNED BY public.lineageedge.id;


--
-- Name: membership; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.membership (
    user_id integer NOT NULL,
    org_id integer NOT NULL
);


--
-- Name: namespace; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.namespace (
    id integer NOT NULL,
    name character varying(64) NOT NULL,
    kind character varying(8) NOT NULL,
    is_admin boolean NOT NULL,
    created_at timestamp with time zone NOT NULL
);


--
-- Name: namespace_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.namespace_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: namespace_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.namespace_id_seq OWNED BY public.namespace.id;


--
-- Name: peft_hub_schema; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.peft_hub_schema (
    version integer NOT NULL
);


--
-- Name: revision; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.revision (
    id integer NOT NULL,
    adapter_id integer NOT NULL,
    sha character varying(40) NOT NULL,
    message character varying NOT NULL,
    author character varying NOT NULL,
    created_at timestamp with time zone NOT NULL,
    meta json,
    broken json
);


--
-- Name: revision_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.revision_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: revision_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.revision_id_seq OWNED BY public.revision.id;


--
-- Name: revisionfile; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.revisionfile (
    revision_id integer NOT NULL,
    path character varying(255) NOT NULL,
    sha256 character varying(64) NOT NULL,
    size bigint NOT NULL
);


--
-- Name: tag; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.tag (
    adapter_id integer NOT NULL,
    name character varying(64) NOT NULL,
    revision_id integer NOT NULL,
    updated_at timestamp with time zone NOT NULL
);


--
-- Name: token; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.token (
    id integer NOT NULL,
    user_id integer NOT NULL,
    lookup character varying(16) NOT NULL,
    token_hash character varying(64) NOT NULL,
    scope character varying(8) NOT NULL,
    namespaces json,
    created_at timestamp with time zone NOT NULL,
    name character varying(64) NOT NULL,
    expires_at timestamp with time zone,
    last_used_at timestamp with time zone
);


--
-- Name: token_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.token_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: token_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.token_id_seq OWNED BY public.token.id;


--
-- Name: websession; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.websession (
    id_hash character varying(64) NOT NULL,
    token_id integer NOT NULL,
    csrf character varying(64) NOT NULL,
    created_at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone NOT NULL
);


--
-- Name: adapter id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.adapter ALTER COLUMN id SET DEFAULT nextval('public.adapter_id_seq'::regclass);


--
-- Name: auditevent id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.auditevent ALTER COLUMN id SET DEFAULT nextval('public.auditevent_id_seq'::regclass);


--
-- Name: eval id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.eval ALTER COLUMN id SET DEFAULT nextval('public.eval_id_seq'::regclass);


--
-- Name: lineageedge id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.lineageedge ALTER COLUMN id SET DEFAULT nextval('public.lineageedge_id_seq'::regclass);


--
-- Name: namespace id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.namespace ALTER COLUMN id SET DEFAULT nextval('public.namespace_id_seq'::regclass);


--
-- Name: revision id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.revision ALTER COLUMN id SET DEFAULT nextval('public.revision_id_seq'::regclass);


--
-- Name: token id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.token ALTER COLUMN id SET DEFAULT nextval('public.token_id_seq'::regclass);


--
-- Data for Name: adapter; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.adapter VALUES (1, 'lab', 'tiny-lora', true, 6442450944, '2026-12-01 12:00:00+00', '2026-12-01 12:00:00+00', 'tiny', 'lora', 8, 8, 6442450944, '["q_proj", "v_proj"]', 'a tiny adapter');


--
-- Data for Name: auditevent; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.auditevent VALUES (1, '2026-12-01 12:00:00+00', 'alice', 'push', 'lab/tiny-lora', '127.0.0.1', '{"revision": "dddddddddddddddddddddddddddddddddddddddd"}');


--
-- Data for Name: blob; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.blob VALUES ('eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee', 6442450944, 1.5, false, '2026-12-01 12:00:00+00', '2026-12-01 12:00:00+00');
INSERT INTO public.blob VALUES ('ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff', 120, NULL, true, '2026-12-01 12:00:00+00', NULL);


--
-- Data for Name: blobupload; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.blobupload VALUES ('eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee', 2, 6442450944, '2026-12-01 12:00:00+00');


--
-- Data for Name: eval; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.eval VALUES ('acc', 0.5, 'toy', '1', 'test', '{"n": 3}', 1, 1, 'alice', '2026-12-01 12:00:00+00');


--
-- Data for Name: lineageedge; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.lineageedge VALUES (1, 2, 0, 'lab/tiny-lora@cccccccccccccccccccccccccccccccccccccccc', 1, 'cccccccccccccccccccccccccccccccccccccccc', 'eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee', 1, 'linear');


--
-- Data for Name: membership; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.membership VALUES (2, 3);


--
-- Data for Name: namespace; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.namespace VALUES (1, 'admin', 'user', true, '2026-12-01 12:00:00+00');
INSERT INTO public.namespace VALUES (2, 'alice', 'user', false, '2026-12-01 12:00:00+00');
INSERT INTO public.namespace VALUES (3, 'lab', 'org', false, '2026-12-01 12:00:00+00');


--
-- Data for Name: peft_hub_schema; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.peft_hub_schema VALUES (1);
INSERT INTO public.peft_hub_schema VALUES (2);
INSERT INTO public.peft_hub_schema VALUES (3);
INSERT INTO public.peft_hub_schema VALUES (4);
INSERT INTO public.peft_hub_schema VALUES (5);


--
-- Data for Name: revision; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.revision VALUES (1, 1, 'cccccccccccccccccccccccccccccccccccccccc', 'first', 'alice', '2026-12-01 12:00:00+00', '{"peft_type": "LORA", "r": 8}', NULL);
INSERT INTO public.revision VALUES (2, 1, 'dddddddddddddddddddddddddddddddddddddddd', 'second', 'alice', '2026-12-01 12:00:00+00', '{}', '{"checked_at": "2026-12-01T12:00:00+00:00", "files": []}');


--
-- Data for Name: revisionfile; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.revisionfile VALUES (1, 'adapter_model.safetensors', 'eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee', 6442450944);
INSERT INTO public.revisionfile VALUES (2, 'adapter_config.json', 'ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff', 120);


--
-- Data for Name: tag; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.tag VALUES (1, 'main', 2, '2026-12-01 12:00:00+00');


--
-- Data for Name: token; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.token VALUES (1, 1, 'phub_adminlook', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'admin', 'null', '2026-12-01 12:00:00+00', 'bootstrap', NULL, '2026-12-01 12:00:00+00');
INSERT INTO public.token VALUES (2, 2, 'phub_alicelook', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'write', '["alice", "lab"]', '2026-12-01 12:00:00+00', 'ci', '2026-12-01 12:00:00+00', NULL);


--
-- Data for Name: websession; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.websession VALUES ('1111111111111111111111111111111111111111111111111111111111111111', 2, '2222222222222222222222222222222222222222222222222222222222222222', '2026-12-01 12:00:00+00', '2026-12-01 12:00:00+00');


--
-- Name: adapter_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.adapter_id_seq', 1, true);


--
-- Name: auditevent_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.auditevent_id_seq', 1, true);


--
-- Name: eval_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.eval_id_seq', 1, true);


--
-- Name: lineageedge_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.lineageedge_id_seq', 1, true);


--
-- Name: namespace_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.namespace_id_seq', 3, true);


--
-- Name: revision_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.revision_id_seq', 2, true);


--
-- Name: token_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.token_id_seq', 2, true);


--
-- Name: adapter adapter_owner_name_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.adapter
    ADD CONSTRAINT adapter_owner_name_key UNIQUE (owner, name);


--
-- Name: adapter adapter_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.adapter
    ADD CONSTRAINT adapter_pkey PRIMARY KEY (id);


--
-- Name: auditevent auditevent_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.auditevent
    ADD CONSTRAINT auditevent_pkey PRIMARY KEY (id);


--
-- Name: blob blob_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.blob
    ADD CONSTRAINT blob_pkey PRIMARY KEY (sha256);


--
-- Name: blobupload blobupload_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.blobupload
    ADD CONSTRAINT blobupload_pkey PRIMARY KEY (sha256, user_id);


--
-- Name: eval eval_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.eval
    ADD CONSTRAINT eval_pkey PRIMARY KEY (id);


--
-- Name: lineageedge lineageedge_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.lineageedge
    ADD CONSTRAINT lineageedge_pkey PRIMARY KEY (id);


--
-- Name: membership membership_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.membership
    ADD CONSTRAINT membership_pkey PRIMARY KEY (user_id, org_id);


--
-- Name: namespace namespace_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.namespace
    ADD CONSTRAINT namespace_pkey PRIMARY KEY (id);


--
-- Name: revision revision_adapter_id_sha_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.revision
    ADD CONSTRAINT revision_adapter_id_sha_key UNIQUE (adapter_id, sha);


--
-- Name: revision revision_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.revision
    ADD CONSTRAINT revision_pkey PRIMARY KEY (id);


--
-- Name: revisionfile revisionfile_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.revisionfile
    ADD CONSTRAINT revisionfile_pkey PRIMARY KEY (revision_id, path);


--
-- Name: tag tag_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tag
    ADD CONSTRAINT tag_pkey PRIMARY KEY (adapter_id, name);


--
-- Name: token token_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.token
    ADD CONSTRAINT token_pkey PRIMARY KEY (id);


--
-- Name: websession websession_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.websession
    ADD CONSTRAINT websession_pkey PRIMARY KEY (id_hash);


--
-- Name: ix_adapter_base_model; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_adapter_base_model ON public.adapter USING btree (base_model);


--
-- Name: ix_adapter_method; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_adapter_method ON public.adapter USING btree (method);


--
-- Name: ix_adapter_name; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_adapter_name ON public.adapter USING btree (name);


--
-- Name: ix_adapter_owner; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_adapter_owner ON public.adapter USING btree (owner);


--
-- Name: ix_adapter_updated_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_adapter_updated_at ON public.adapter USING btree (updated_at);


--
-- Name: ix_auditevent_action; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_auditevent_action ON public.auditevent USING btree (action);


--
-- Name: ix_auditevent_actor; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_auditevent_actor ON public.auditevent USING btree (actor);


--
-- Name: ix_auditevent_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_auditevent_at ON public.auditevent USING btree (at);


--
-- Name: ix_eval_revision_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_eval_revision_id ON public.eval USING btree (revision_id);


--
-- Name: ix_lineage_parent; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_lineage_parent ON public.lineageedge USING btree (parent_adapter_id);


--
-- Name: ix_lineageedge_child_revision_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_lineageedge_child_revision_id ON public.lineageedge USING btree (child_revision_id);


--
-- Name: ix_namespace_name; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX ix_namespace_name ON public.namespace USING btree (name);


--
-- Name: ix_revision_adapter_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_revision_adapter_id ON public.revision USING btree (adapter_id);


--
-- Name: ix_revision_sha; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_revision_sha ON public.revision USING btree (sha);


--
-- Name: ix_revisionfile_sha256; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_revisionfile_sha256 ON public.revisionfile USING btree (sha256);


--
-- Name: ix_token_lookup; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX ix_token_lookup ON public.token USING btree (lookup);


--
-- Name: ix_token_user_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_token_user_id ON public.token USING btree (user_id);


--
-- Name: ix_websession_token_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_websession_token_id ON public.websession USING btree (token_id);


--
-- Name: blobupload blobupload_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.blobupload
    ADD CONSTRAINT blobupload_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.namespace(id);


--
-- Name: eval eval_revision_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.eval
    ADD CONSTRAINT eval_revision_id_fkey FOREIGN KEY (revision_id) REFERENCES public.revision(id);


--
-- Name: lineageedge lineageedge_child_revision_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.lineageedge
    ADD CONSTRAINT lineageedge_child_revision_id_fkey FOREIGN KEY (child_revision_id) REFERENCES public.revision(id);


--
-- Name: lineageedge lineageedge_parent_adapter_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.lineageedge
    ADD CONSTRAINT lineageedge_parent_adapter_id_fkey FOREIGN KEY (parent_adapter_id) REFERENCES public.adapter(id);


--
-- Name: membership membership_org_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.membership
    ADD CONSTRAINT membership_org_id_fkey FOREIGN KEY (org_id) REFERENCES public.namespace(id);


--
-- Name: membership membership_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.membership
    ADD CONSTRAINT membership_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.namespace(id);


--
-- Name: revision revision_adapter_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.revision
    ADD CONSTRAINT revision_adapter_id_fkey FOREIGN KEY (adapter_id) REFERENCES public.adapter(id);


--
-- Name: revisionfile revisionfile_revision_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.revisionfile
    ADD CONSTRAINT revisionfile_revision_id_fkey FOREIGN KEY (revision_id) REFERENCES public.revision(id);


--
-- Name: tag tag_adapter_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tag
    ADD CONSTRAINT tag_adapter_id_fkey FOREIGN KEY (adapter_id) REFERENCES public.adapter(id);


--
-- Name: tag tag_revision_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.tag
    ADD CONSTRAINT tag_revision_id_fkey FOREIGN KEY (revision_id) REFERENCES public.revision(id);


--
-- Name: token token_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.token
    ADD CONSTRAINT token_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.namespace(id);


--
-- Name: websession websession_token_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.websession
    ADD CONSTRAINT websession_token_id_fkey FOREIGN KEY (token_id) REFERENCES public.token(id);


--
-- PostgreSQL database dump complete
--


