-- Run once by the postgres image when it initialises an empty data volume: the database that
-- the Apicurio Registry container of docker-compose.yml stores its schemas in (demo
-- credentials; the registry creates its tables itself).
CREATE ROLE registry LOGIN PASSWORD 'registry';
CREATE DATABASE registry OWNER registry;
