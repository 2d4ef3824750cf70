//! MQTT over TLS with a password and a client certificate, against a Mosquitto listener that
//! requires all three. The certificates are made at test time with the openssl command line
//! (a CA, a server certificate for 127.0.0.1, a client certificate, and an unrelated CA), the
//! password file with `mosquitto_passwd`. The broker's first listener stays plain and
//! anonymous so the test's own clients can publish and watch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sparsewatch_e2e::{
    read_retained, wait_until, Daemon, Mosquitto, TestClient, TestConfig, TIMEOUT,
};

use crate::{values_payload, T0_MS};

const USER: &str = "sensor-daemon";
const PASSWORD: &str = "correct horse";

/// Test certificates and secrets in a private folder.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf(
            "server",
            "ca",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        pki.leaf("client", "ca", "extendedKeyUsage=clientAuth\n");
        let pw = pki.path("passwords");
        let status = Command::new(mosquitto_passwd())
            .args(["-c", "-b"])
            .arg(&pw)
            .args([USER, PASSWORD])
            .status()
            .expect("run mosquitto_passwd");
        assert!(status.success(), "mosquitto_passwd failed");
        std::fs::write(pki.path("right.pw"), format!("{PASSWORD}\n")).expect("write");
        std::fs::write(pki.path("wrong.pw"), "not the password\n").expect("write");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl is needed for the TLS tests (apt-get install -y openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        let (key, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN=sparsewatch test {name}"),
        );
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &subj,
        ]);
    }

    fn leaf(&self, name: &str, ca: &str, ext: &str) {
        let (key, csr, crt, cnf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.cnf"),
        );
        std::fs::write(self.path(&cnf), format!("basicConstraints=CA:FALSE\n{ext}"))
            .expect("write");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &cnf,
        ]);
    }

    /// Mosquitto options of the secured listener: TLS, client certificate and password required.
    fn listener(&self) -> String {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
             allow_anonymous false\npassword_file {}\n",
            self.p("ca.crt"),
            self.p("server.crt"),
            self.p("server.key"),
            self.p("passwords"),
        )
    }

    /// A daemon config for the secured listener on `tls_port`, trusting `ca` and reading the
    /// password from `password`.
    fn config(&self, name: &str, tls_port: u16, ca: &str, password: &str) -> TestConfig {
        let mut c = TestConfig::new(name, tls_port);
        c.mqtt_extra = format!(
            "username = \"{USER}\"\npassword_file = \"{}\"",
            self.p(password)
        );
        c.extra = format!(
            "[mqtt.tls]\nenabled = true\nca_file = \"{}\"\nclient_cert_file = \"{}\"\n\
             client_key_file = \"{}\"\n",
            self.p(ca),
            self.p("client.crt"),
            self.p("client.key"),
        );
        c
    }
}

fn mosquitto_passwd() -> PathBuf {
    [
        "/usr/bin/mosquitto_passwd",
        "/usr/local/bin/mosquitto_passwd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .unwrap_or_else(|| PathBuf::from("mosquitto_passwd"))
}

fn start(pki: &Pki) -> (Mosquitto, u16) {
    let broker = Mosquitto::start_with_listener(&pki.listener()).expect("start mosquitto with TLS");
    let tls_port = broker.second_port().expect("the TLS listener");
    (broker, tls_port)
}

/// Waits until `daemon` logs `n` failed connection attempts carrying `what`, and is running.
fn wait_failures(daemon: &mut Daemon, what: &str, n: usize) {
    let seen = wait_until(TIMEOUT, || {
        let count = daemon
            .output()
            .lines()
            .filter(|l| l.contains("broker connection failed") && l.contains(what))
            .count();
        (count >= n).then_some(())
    });
    assert!(
        seen.is_some(),
        "fewer than {n} failed attempts with {what:?}:\n{}",
        daemon.output()
    );
    assert!(
        daemon.is_running(),
        "the daemon gave up:\n{}",
        daemon.output()
    );
}

/// With the right CA, client certificate and password, the daemon connects over TLS: its
/// retained status reads "online", the samples published (on the plain listener) are taken,
/// and its window codes come back out through the TLS connection.
#[test]
fn tls_with_client_certificate_and_password_carries_the_traffic() {
    let pki = Pki::new();
    let (broker, tls_port) = start(&pki);
    let config = pki.config("tls-ok", tls_port, "ca.crt", "right.pw");
    let mut daemon = Daemon::start(&config).expect("start the daemon");
    let online = wait_until(TIMEOUT, || {
        assert!(
            daemon.is_running(),
            "the daemon exited:\n{}",
            daemon.output()
        );
        let m = read_retained(broker.port(), &config.status_topic()).ok()??;
        (m.json().ok()?["state"] == "online").then_some(())
    });
    assert!(
        online.is_some(),
        "never online over TLS:\n{}",
        daemon.output()
    );
    assert!(daemon.output().contains("tls=true"), "{}", daemon.output());

    let mut client =
        TestClient::connect(broker.port(), &format!("{}-pub", config.node_id)).expect("connect");
    let codes = format!("{}/{}/code/#", config.prefix, config.node_id);
    client.subscribe(&codes).expect("subscribe");
    let topic = config.input_topic("site/s1");
    for i in 0..64 {
        let v = (i as f64 * 0.2).sin();
        client
            .publish(&topic, values_payload(T0_MS + i * 1000, &[("v", v)]))
            .expect("publish");
    }
    client.flush().expect("flushed");
    let code = client.recv(TIMEOUT);
    assert!(
        code.is_some(),
        "no code came back over TLS:\n{}",
        daemon.output()
    );
    let s = daemon.wait_for_summary(TIMEOUT, |s| s.get("samples") >= 64);
    assert!(s.is_some(), "samples not taken:\n{}", daemon.output());
    assert_eq!(
        daemon.stop().expect("stop").code(),
        Some(0),
        "{}",
        daemon.output()
    );
}

/// A wrong password: the broker refuses the login; the daemon says so (with what to check),
/// keeps running and retries with backoff, and still stops cleanly.
#[test]
fn a_wrong_password_is_reported_and_retried_not_fatal() {
    let pki = Pki::new();
    let (_broker, tls_port) = start(&pki);
    let config = pki.config("tls-badpw", tls_port, "ca.crt", "wrong.pw");
    let mut daemon = Daemon::start(&config).expect("start the daemon");
    wait_failures(&mut daemon, "NotAuthorized", 2);
    assert!(
        daemon
            .output()
            .contains("check mqtt.username and the password in mqtt.password_file"),
        "{}",
        daemon.output()
    );
    assert_eq!(
        daemon.stop().expect("stop").code(),
        Some(0),
        "{}",
        daemon.output()
    );
}

/// A broker certificate that does not chain to the configured CA: a TLS error naming the
/// reason (unknown issuer) and what to check; the daemon keeps retrying.
#[test]
fn an_untrusted_broker_certificate_is_a_clear_tls_error() {
    let pki = Pki::new();
    let (_broker, tls_port) = start(&pki);
    let config = pki.config("tls-badca", tls_port, "other-ca.crt", "right.pw");
    let mut daemon = Daemon::start(&config).expect("start the daemon");
    wait_failures(&mut daemon, "UnknownIssuer", 2);
    assert!(
        daemon.output().contains("mqtt.tls.ca_file"),
        "{}",
        daemon.output()
    );
    assert_eq!(
        daemon.stop().expect("stop").code(),
        Some(0),
        "{}",
        daemon.output()
    );
}

/// `check-config` loads the TLS and password files: a missing CA file, a file that holds no
/// certificate, a key without its certificate and an empty password file each exit 2 naming
/// the key; the complete set passes.
#[test]
fn check_config_names_the_bad_tls_or_password_key() {
    let pki = Pki::new();
    std::fs::write(pki.path("not-a-cert.pem"), "hello\n").expect("write");
    std::fs::write(pki.path("empty.pw"), "").expect("write");
    let good = pki.config("cc", 8883, "ca.crt", "right.pw");
    let cases = [
        (
            good.to_toml().replace("ca.crt", "missing.crt"),
            "mqtt.tls.ca_file",
        ),
        (
            good.to_toml().replace("ca.crt", "not-a-cert.pem"),
            "mqtt.tls.ca_file",
        ),
        (
            good.to_toml().replace(
                &format!("client_cert_file = \"{}\"", pki.p("client.crt")),
                "",
            ),
            "mqtt.tls.client_cert_file",
        ),
        (
            good.to_toml().replace("right.pw", "empty.pw"),
            "mqtt.password_file",
        ),
    ];
    for (toml, key) in cases {
        let (code, out) = check_config(pki.dir.path(), &toml);
        assert_eq!(code, Some(2), "{key}: {out}");
        assert!(out.contains(key), "{key} not named:\n{out}");
    }
    let (code, out) = check_config(pki.dir.path(), &good.to_toml());
    assert_eq!(code, Some(0), "{out}");
}

fn check_config(dir: &Path, toml: &str) -> (Option<i32>, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, toml).expect("write config");
    let mut p = sparsewatch_e2e::Process::spawn(
        sparsewatch_e2e::daemon_binary(),
        ["check-config".as_ref(), path.as_os_str()],
    )
    .expect("spawn");
    let status = p
        .wait_timeout(Duration::from_secs(30))
        .expect("check-config finishes");
    (status.code(), p.output())
}
