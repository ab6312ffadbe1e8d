//! Black-box tests: one executable, a shared harness, one module per area. Every test starts
//! the real server (`myelin-test-server`) on 127.0.0.1:0 with its own temp dir.

mod harness;

mod abuse; // rate limits, outbound IP filtering, listener resources, request hygiene, shutdown
mod accounts; // registration, login, devices, profiles, account data
mod admin; // reports, and Synapse's admin API
mod admin_tools; // synadm, Synapse's command-line admin tool, against Myelin
mod appservices; // application services: registration files, masquerading, transactions, queries
mod clients; // matrix-nio and matrix-js-sdk sessions
mod directory; // aliases, room directory, user directory
mod e2ee; // keys, cross-signing, to-device, key backup
mod email; // e-mail and third-party identifiers against a local SMTP server (aiosmtpd)
mod ephemeral; // receipts, read markers, typing, presence
mod federating; // two Myelins on loopback with TLS: joins, messages, restarts
mod federation; // server keys, the federation version endpoint
mod federation_abuse; // forged, misdirected, malformed and flooding federation input
mod foundation; // the binary, config, storage, HTTP basics
mod fuzz; // every Client-Server operation with generated input: never a 5xx
mod http_antispam; // the native synapse-http-antispam module
mod identity; // identity servers: binding and unbinding third-party identifiers, 3PID invites
mod import_synapse; // `myelin import-synapse`: a stopped Synapse's database, media and signing key
mod media; // the media repository
mod media_storage; // media storage providers: file_system and synapse-s3-storage-provider against a local S3
mod metrics; // /_synapse/metrics: Synapse's names, counting what happened
mod modules; // module loading, web resources, spam-checker callbacks
mod packaging; // scripts/package.sh's layout: the container entry point and the systemd unit
mod postgres; // PostgreSQL's settings and checks (Synapse's psycopg2 config)
mod published_modules; // modules from PyPI doing what their READMEs say
mod push; // push rules, unread counts, pushers, notifications, start-up endpoints
mod python_modules; // Synapse's Python modules on the embedded interpreter
mod relations; // /relations, /threads, /timestamp_to_event, bundled aggregations
mod reliability; // bad input, failed requests, hostile connections, clean stops
mod room_versions; // every supported room version; version 12's room IDs and creators
mod rooms; // rooms, membership, messages, the graph
mod search; // POST /search
mod sliding_sync; // simplified sliding sync (MSC4186)
mod spec_shapes; // responses against the spec's schemas
mod sso; // single sign-on with a local OpenID Connect provider (oidc-provider) and chromium
mod synapse_federation; // Myelin and a real Synapse federating
mod sync; // /sync
mod visibility; // history visibility on every read path, against Synapse
mod workers; // several processes on one PostgreSQL database
