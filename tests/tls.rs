//! Encrypted database connections: a PostgreSQL of the test's own with
//! `ssl = on` and a certificate signed by a CA made here. With
//! `sslmode = verify-full` and that CA klines connects over TLS; with
//! another CA, or a host name the certificate does not carry, it refuses
//! and says which setting to check.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{tempdir, PgCluster};
use klines::config::DatabaseConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA: its certificate (PEM) and what signs with it.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// The server's certificate for `localhost` and 127.0.0.1, and its key.
fn server_cert(issuer: &Issuer<'static, KeyPair>) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    params
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::ServerAuth);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn database(url: String, ca: &Path) -> DatabaseConfig {
    DatabaseConfig {
        url,
        max_connections: 1,
        connect_timeout: Duration::from_secs(5),
        sslmode: Some("verify-full".into()),
        ssl_root_cert: Some(ca.to_owned()),
        ..DatabaseConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_with_the_servers_ca_and_refuses_another() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (ca_pem, issuer) = ca("klines test CA");
    let (other_pem, _) = ca("some other CA");
    let (cert, key) = server_cert(&issuer);
    let pg = PgCluster::start_with(|dir| {
        std::fs::write(dir.join("server.crt"), &cert).unwrap();
        write_private(&dir.join("server.key"), &key);
        vec![
            "ssl=on".into(),
            format!("ssl_cert_file={}", dir.join("server.crt").display()),
            format!("ssl_key_file={}", dir.join("server.key").display()),
        ]
    });
    assert!(pg.ready(Duration::from_secs(30)).await, "the server starts");
    let certs = tempdir();
    let right = certs.path().join("ca.pem");
    let wrong = certs.path().join("other-ca.pem");
    std::fs::write(&right, &ca_pem).unwrap();
    std::fs::write(&wrong, &other_pem).unwrap();

    // The right CA: connected, over TLS.
    let pool = klines::db::connect(&database(pg.url("postgres"), &right))
        .await
        .expect("verify-full with the server's CA connects");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ssl, "the session is encrypted");
    pool.close().await;
    // By name too (the certificate carries localhost).
    let by_name = pg.url("postgres").replace("127.0.0.1", "localhost");
    klines::db::connect(&database(by_name, &right))
        .await
        .expect("verify-full by host name")
        .close()
        .await;

    // Another CA: refused, and the message says so.
    let err = klines::db::connect(&database(pg.url("postgres"), &wrong))
        .await
        .expect_err("a certificate the CA did not sign is refused");
    let message = klines::db::explain(&err);
    assert!(
        message.contains("not signed by the CA in database.ssl_root_cert"),
        "{message}"
    );

    // The command line says the same and exits non-zero.
    let dir = tempdir();
    let config = dir.path().join("klines.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nsslmode = \"verify-full\"\nssl_root_cert = \"{}\"\n\n[exchanges.binance]\nws_url = \"ws://127.0.0.1:1\"\nrest_url = \"http://127.0.0.1:1\"\npairs = [\"BTCUSDT\"]\n",
            wrong.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klines"))
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .env("DATABASE_URL", pg.url("postgres"))
        .env("KLINES_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not signed by the CA in database.ssl_root_cert"),
        "{stderr}"
    );
}
