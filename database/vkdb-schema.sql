-- Schema of the vkdb tables shared with the web service (PostgreSQL 13+ with PostGIS 3).
-- Every statement is guarded with IF NOT EXISTS, so running the file on an existing vkdb
-- only adds what is missing. The runner's own tables and columns come from its Alembic
-- migrations (georeference/migrations), which 'georeference-runner init-db' applies.

CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE IF NOT EXISTS raw_maps (
    id integer PRIMARY KEY,
    file_name varchar(255) NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    map_type varchar(255) NOT NULL,
    default_crs integer,
    rel_path varchar(255) NOT NULL,
    map_scale integer,
    allow_download boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS metadata (
    raw_map_id integer PRIMARY KEY REFERENCES raw_maps (id),
    title text,
    title_short text,
    title_serie text,
    description text,
    measures text,
    type text,
    technic text,
    ppn text,
    permalink text,
    license text,
    owner text,
    link_zoomify text,
    time_of_publication timestamp,
    link_thumb_small text,
    link_thumb_mid text
);

CREATE TABLE IF NOT EXISTS transformations (
    id serial PRIMARY KEY,
    submitted timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    user_id varchar(255),
    params text NOT NULL,
    target_crs integer,
    validation varchar(20) NOT NULL DEFAULT 'missing'
        CHECK (validation IN ('missing', 'valid', 'invalid')),
    raw_map_id integer NOT NULL REFERENCES raw_maps (id),
    overwrites integer NOT NULL DEFAULT 0,
    comment text,
    clip geometry(GEOMETRY, 4326)
);
CREATE INDEX IF NOT EXISTS transformations_raw_map_id_idx ON transformations (raw_map_id);

CREATE TABLE IF NOT EXISTS georef_maps (
    raw_map_id integer PRIMARY KEY REFERENCES raw_maps (id),
    transformation_id integer NOT NULL REFERENCES transformations (id),
    rel_path varchar(255) NOT NULL,
    extent geometry(POLYGON, 4326),
    last_processed timestamp
);

CREATE TABLE IF NOT EXISTS jobs (
    id serial PRIMARY KEY,
    type varchar(100) NOT NULL,
    description text,
    state varchar(20) NOT NULL DEFAULT 'not_started',
    submitted timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    user_id varchar(255),
    comment text
);
CREATE INDEX IF NOT EXISTS jobs_state_submitted_idx ON jobs (state, submitted, id);

CREATE TABLE IF NOT EXISTS jobs_history (
    id integer PRIMARY KEY,
    type varchar(100) NOT NULL,
    description text,
    state varchar(20) NOT NULL,
    submitted timestamp NOT NULL,
    user_id varchar(255),
    comment text
);
