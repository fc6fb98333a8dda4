//! Escalation email and PHI: with `include_phi = false` an email names the
//! finding by readback's own reference (`RB-<n>`), never by the caller's id
//! (which may embed an accession number or MRN), in its subject, body,
//! link and Message-ID; no field of a raise or a token can add a header or
//! a line of its own; the reference leads back to the finding through the
//! API. Sent to a real SMTP server.

use crate::common::*;
use serde_json::json;

crate::both_databases!(escalation_email_names_no_caller_id_and_takes_no_injected_lines);

async fn escalation_email_names_no_caller_id_and_takes_no_injected_lines(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(
        db,
        &format!(
            "{}\n[scheduler]\ntick = \"100ms\"\n\n[escalation]\n\
             link_template = \"https://pacs.hospital.example/worklist?readback={{reference}}\"\n\n\
             [[escalation.levels]]\nafter = \"0s\"\nto = [\"recipient\", \"oncall@hospital.example\"]\n",
            smtp.config()
        ),
    )
    .await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    // alice's directory entry comes from her token; mallory's token carries
    // a header in its email claim.
    for (user, email) in [
        ("alice", "alice@hospital.example"),
        (
            "mallory",
            "mallory@hospital.example\r\nBcc: evil@attacker.example",
        ),
    ] {
        clients
            .connect(user, &token_with_email(user, &["radiologist"], email))
            .await;
        clients.close(user).await;
    }
    let http = Http::default();
    let mut references = Vec::new();
    for (user, id) in [
        ("alice", "MRN-4711-ACC-0815"),
        ("mallory", "MRN-9999-ACC-0001"),
    ] {
        let raised = http
            .raise_with(
                &daemon,
                &json!({
                    "id": id,
                    "recipient": { "userId": user },
                    "severity": "critical",
                    "title": "Pneumothorax\r\nBcc: evil@attacker.example\r\n\r\nOpen: https://evil.example/\nPatient: Doe",
                    "patientId": "MRN-4711",
                    "ackWithin": 1000,
                }),
            )
            .await;
        let reference = raised["reference"].as_str().expect("reference").to_string();
        assert!(reference.starts_with("RB-"), "{raised}");
        references.push((id, reference));
    }

    // alice and on-call for hers, on-call only for mallory's (her claim was
    // not remembered as an address).
    let mails = smtp.wait_for(3).await;
    env.wait_audit(Audit::action("notification.escalated"), 2)
        .await;
    assert_eq!(mails.len(), 3, "{mails:#?}");
    for mail in &mails {
        // The envelope and headers name no injected recipient; no line of
        // the message is one the title tried to write.
        let headers = mail.raw.split("\n\n").next().unwrap_or("").to_lowercase();
        assert!(!headers.contains("attacker"), "{}", mail.raw);
        for line in decoded(&mail.raw).lines() {
            for injected in ["Bcc:", "Open: https://evil", "Patient:"] {
                assert!(
                    !line.starts_with(injected),
                    "an injected line: {}",
                    mail.raw
                );
            }
        }
        for (id, _) in &references {
            assert!(
                !decoded(&mail.raw).contains(id),
                "the caller's id in the email: {}",
                mail.raw
            );
        }
        assert!(mail.subject.contains("RB-"), "{}", mail.subject);
        assert!(mail.message_id.starts_with("<RB-"), "{}", mail.message_id);
        assert!(
            mail.to.ends_with("alice@hospital.example")
                || mail.to.ends_with("oncall@hospital.example"),
            "{}",
            mail.to
        );
    }
    let (alice_id, alice_ref) = &references[0];
    assert!(
        mails
            .iter()
            .any(|m| decoded(&m.raw).contains(&format!("worklist?readback={alice_ref}\n"))),
        "the link carries the reference: {mails:#?}"
    );

    // The reference leads back to the finding.
    let found = http
        .get(
            &daemon.api(&format!("/notifications/{alice_ref}")),
            &admin_token(),
        )
        .await;
    assert_eq!(found.status, 200, "{:?}", found.body);
    assert_eq!(found.body["id"], json!(alice_id));
    assert_eq!(found.body["reference"], json!(alice_ref));

    // A link that would carry the caller's id is refused without include_phi.
    let path = env.dir.path().join("link.toml");
    let text = std::fs::read_to_string(env.write_config())
        .expect("config")
        .replace("readback={reference}", "n={id}");
    std::fs::write(&path, text).expect("write");
    let (code, out) = readbackd(&["check-config", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("escalation.link_template"), "{out}");
}

/// The message with quoted-printable's soft line breaks and `=3D` undone
/// (readback's bodies are ASCII here, so nothing else is encoded).
fn decoded(raw: &str) -> String {
    raw.replace("\r\n", "\n")
        .replace("=\n", "")
        .replace("=3D", "=")
}
