//! Secure connections: the NATS and Kafka connection settings against real servers.
//!
//! - NATS: each test runs its own `nats-server` (on a free port, with its own store) with TLS on a
//!   certificate the test generates (its own CA, made with rcgen) and user/password, token, `NKey`
//!   or client-certificate auth. The outbox relay publishes over it; a client without the CA, or
//!   with wrong credentials, is refused with a typed error that names the cause and hides the
//!   secret.
//! - Kafka: the test runs its own tansu broker (plaintext, in memory): a plaintext
//!   `KafkaConnection` connects and a publisher produces through it; TLS settings are checked when
//!   the connection is built.

#![allow(clippy::unwrap_used, reason = "tests")]

use async_nats::jetstream::{self, stream};
use dtx::outbox::{OutboxMessage, Publisher, RelayOptions, headers};
use dtx::{EventStore, ExpectedVersion, NewEvent, StreamId, Uuid};
use dtx_postgres::PgOutbox;
use dtx_postgres::kafka::{KafkaConnectError, KafkaConnection, KafkaPublisher};
use dtx_postgres::nats::{NatsConnectError, NatsConnection, NatsPublisher};
use dtx_postgres::tls::{PemItem, Tls, TlsError};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rskafka::client::partition::UnknownTopicHandling;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tests::brokers::{NatsServer, free_port, tansu_bin, wait_for_port};

const USER: &str = "orders";
const PASSWORD: &str = "pa55-w0rd-orders";

/// A CA of the test's own, and a server and a client certificate it signed, written as PEM files
/// into a directory removed with it.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("dtx-pki-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = ca("dtx test CA");
        let (server_cert, server_key) = leaf(&ca, ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf(&ca, ExtendedKeyUsagePurpose::ClientAuth);
        let pki = Self {
            dir,
            ca_pem: ca.pem(),
        };
        for (name, pem) in [
            ("ca.pem", pki.ca_pem.as_str()),
            ("server.pem", &server_cert),
            ("server-key.pem", &server_key),
            ("client.pem", &client_cert),
            ("client-key.pem", &client_key),
        ] {
            std::fs::write(pki.path(name), pem).unwrap();
        }
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The `nats-server` arguments serving TLS with the server certificate.
    fn nats_tls_args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--tls".into(),
            "--tlscert".into(),
            self.path("server.pem").into(),
            "--tlskey".into(),
            self.path("server-key.pem").into(),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate for 127.0.0.1 and localhost signed by `ca`: (certificate PEM, key PEM).
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "dtx test");
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tls_url(server: &NatsServer) -> String {
    format!("tls://127.0.0.1:{}", server.port)
}

/// A server with TLS and user/password auth.
fn tls_server_with_password(pki: &Pki) -> NatsServer {
    let mut args = pki.nats_tls_args();
    args.extend([
        "--user".into(),
        USER.into(),
        "--pass".into(),
        PASSWORD.into(),
    ]);
    NatsServer::start_with(args)
}

/// Publishes one event through the outbox relay and `publisher`, and reads it back from the
/// stream `name` (capturing `{prefix}.>`) over `client`.
async fn relay_one_event(client: &async_nats::Client, name: &str, prefix: &str) {
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        ..stream::Config::default()
    })
    .await
    .unwrap();
    let store = tests::pg_store().await.with_outbox(true);
    let event = NewEvent::from_json("Placed", &serde_json::json!({ "total": 42 })).unwrap();
    let event_id = event.event_id;
    store
        .append(
            &StreamId::new("Order-1").unwrap(),
            ExpectedVersion::Exact(0),
            vec![event],
        )
        .await
        .unwrap();
    let publisher = NatsPublisher::new(client.clone(), prefix);
    let relay = PgOutbox::new(store.pool().clone()).relay(publisher, RelayOptions::default());
    assert_eq!(relay.run_until_idle().await.unwrap(), 1);

    let message = js
        .get_stream(name)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&format!("{prefix}.Order-1"))
        .await
        .unwrap();
    let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(payload, serde_json::json!({ "total": 42 }));
    let header = message.headers.get(headers::EVENT_ID).unwrap();
    assert_eq!(header.to_string(), event_id.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_over_tls_with_a_user_and_password() {
    let pki = Pki::new();
    let server = tls_server_with_password(&pki);
    let client = NatsConnection::new([tls_url(&server)])
        .tls(Tls::new().ca_file(pki.path("ca.pem")))
        .user_and_password(USER, PASSWORD)
        .name("dtx-secure-test")
        .connect()
        .await
        .unwrap();
    relay_one_event(&client, "SECURE", "secure").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_servers_ca_is_refused() {
    let pki = Pki::new();
    let server = tls_server_with_password(&pki);
    let other = ca("another CA");
    for (tls, which) in [
        (Tls::new(), "the system's CAs"),
        (Tls::new().ca_pem(other.pem()), "another CA"),
    ] {
        let error = NatsConnection::new([tls_url(&server)])
            .tls(tls)
            .user_and_password(USER, PASSWORD)
            .connect()
            .await
            .unwrap_err();
        let NatsConnectError::TlsHandshake { servers, problem } = &error else {
            panic!("trusting {which}: expected a TLS handshake error, got {error:?}");
        };
        assert_eq!(*servers, tls_url(&server));
        assert!(
            problem.to_lowercase().contains("certificate"),
            "trusting {which}: {error}"
        );
    }

    // Without TLS settings the client still upgrades (the server asks for TLS), and fails the
    // same way.
    let error = NatsConnection::new([format!("127.0.0.1:{}", server.port)])
        .user_and_password(USER, PASSWORD)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(error, NatsConnectError::TlsHandshake { .. }),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_without_showing_them() {
    let pki = Pki::new();
    let server = tls_server_with_password(&pki);
    let wrong = "not-the-pa55-w0rd";
    for connection in [
        NatsConnection::new([tls_url(&server)]).user_and_password(USER, wrong),
        NatsConnection::new([tls_url(&server)]).token(wrong),
        NatsConnection::new([tls_url(&server)]),
    ] {
        let connection = connection.tls(Tls::new().ca_pem(pki.ca_pem.clone()));
        let error = connection.connect().await.unwrap_err();
        assert!(
            matches!(error, NatsConnectError::Refused { .. }),
            "{connection:?}: {error:?}"
        );
        for shown in [
            error.to_string(),
            format!("{error:?}"),
            format!("{connection:?}"),
        ] {
            assert!(!shown.contains(wrong), "{shown}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_authenticates() {
    let pki = Pki::new();
    let token = "t0ken-of-the-orders-service";
    let mut args = pki.nats_tls_args();
    args.extend(["--auth".into(), token.into()]);
    let server = NatsServer::start_with(args);
    let client = NatsConnection::new([tls_url(&server)])
        .tls(Tls::new().ca_pem(pki.ca_pem.clone()))
        .token(token)
        .connect()
        .await
        .unwrap();
    client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_authenticates_and_a_foreign_one_is_refused() {
    let pki = Pki::new();
    let user = nkeys::KeyPair::new_user();
    let config = pki.path("nkey.conf");
    std::fs::write(
        &config,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let mut args = pki.nats_tls_args();
    args.extend(["-c".into(), config.into()]);
    let server = NatsServer::start_with(args);
    let connection = |seed: String| {
        NatsConnection::new([tls_url(&server)])
            .tls(Tls::new().ca_pem(pki.ca_pem.clone()))
            .nkey(seed)
    };
    let client = connection(user.seed().unwrap()).connect().await.unwrap();
    relay_one_event(&client, "SECURE_NKEY", "nkey").await;

    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let error = connection(stranger.clone()).connect().await.unwrap_err();
    assert!(
        matches!(error, NatsConnectError::Refused { .. }),
        "{error:?}"
    );
    assert!(!format!("{error} {error:?}").contains(&stranger));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let mut args = pki.nats_tls_args();
    args.extend([
        "--tlsverify".into(),
        "--tlscacert".into(),
        pki.path("ca.pem").into_os_string(),
    ]);
    let server = NatsServer::start_with(args);
    let trusting = Tls::new().ca_file(pki.path("ca.pem"));

    let client = NatsConnection::new([tls_url(&server)])
        .tls(
            trusting
                .clone()
                .client_cert_files(pki.path("client.pem"), pki.path("client-key.pem")),
        )
        .connect()
        .await
        .unwrap();
    client.flush().await.unwrap();

    let error = NatsConnection::new([tls_url(&server)])
        .tls(trusting)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            NatsConnectError::TlsHandshake { .. } | NatsConnectError::Unreachable { .. }
        ),
        "{error:?}"
    );
}

#[test]
fn unusable_tls_material_is_named_before_connecting() {
    let pki = Pki::new();
    let missing = pki.path("missing-ca.pem");
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "this is not PEM").unwrap();

    let error = NatsConnection::new(["tls://127.0.0.1:4222"])
        .tls(Tls::new().ca_file(&missing))
        .options()
        .unwrap_err();
    assert!(
        matches!(&error, NatsConnectError::Tls(TlsError::Unreadable { what: PemItem::CaCertificate, path, .. }) if *path == missing),
        "{error:?}"
    );
    assert!(error.to_string().contains("missing-ca.pem"), "{error}");

    let error = KafkaConnection::new(["127.0.0.1:9093"])
        .tls(Tls::new().ca_file(&garbage))
        .builder()
        .unwrap_err();
    assert!(
        matches!(
            &error,
            KafkaConnectError::Tls(TlsError::BadPem {
                what: PemItem::CaCertificate,
                ..
            })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("garbage.pem"), "{error}");

    // A key that does not belong to the certificate.
    let error = Tls::new()
        .ca_file(pki.path("ca.pem"))
        .client_cert_files(pki.path("client.pem"), pki.path("server-key.pem"))
        .client_config()
        .unwrap_err();
    assert!(matches!(error, TlsError::Rejected { .. }), "{error:?}");

    // A key file holding a certificate only.
    let error = Tls::new()
        .ca_file(pki.path("ca.pem"))
        .client_cert_files(pki.path("client.pem"), pki.path("client.pem"))
        .client_config()
        .unwrap_err();
    assert!(
        matches!(
            error,
            TlsError::BadPem {
                what: PemItem::ClientKey,
                ..
            }
        ),
        "{error:?}"
    );
}

/// A tansu broker of the test's own: plaintext, in memory, on a free port.
struct Tansu {
    port: u16,
    child: Child,
}

impl Tansu {
    fn start() -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "tansu");
        Self { port, child }
    }

    fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_kafka_connection_publishes() {
    let broker = Tansu::start();
    let connection = KafkaConnection::new([broker.broker()])
        .client_id("dtx-secure-test")
        .timeout(Duration::from_secs(20));
    let client = connection.connect().await.unwrap();
    let topic = "secure";
    client
        .controller_client()
        .unwrap()
        .create_topic(topic, 1, 1, 5_000)
        .await
        .unwrap();

    let message = OutboxMessage {
        id: 1,
        key: "Order-1".to_owned(),
        sequence: Some(1),
        message_id: Uuid::now_v7(),
        message_type: "Placed".to_owned(),
        payload: r#"{"total":42}"#.into(),
        headers: [(headers::EVENT_ID.to_owned(), "e-1".to_owned())].into(),
        attempts: 0,
        last_error: None,
        created_at: chrono::Utc::now(),
    };
    let publisher = KafkaPublisher::new(connection.connect().await.unwrap(), topic);
    publisher.publish(&message).await.unwrap();

    let partition = client
        .partition_client(topic, 0, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    let (records, _) = partition
        .fetch_records(0, 1..1_000_000, 1_000)
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].record.value.as_deref(),
        Some(&b"{\"total\":42}"[..])
    );

    // TLS settings against this plaintext broker fail the handshake, within the timeout.
    let pki = Pki::new();
    let error = KafkaConnection::new([broker.broker()])
        .tls(Tls::new().ca_pem(pki.ca_pem.clone()))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            KafkaConnectError::TlsHandshake { .. } | KafkaConnectError::Unreachable { .. }
        ),
        "{error:?}"
    );
}
