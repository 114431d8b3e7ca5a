//! The API with curl, as the README shows it (skipped where curl is not installed).

use crate::support::*;

fn curl(args: Vec<String>) -> Option<(String, String)> {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(&args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((body.to_string(), code.to_string()))
}

#[tokio::test]
async fn curl_calls_the_api() {
    let env = Env::start().await;
    let base = format!("http://{}", env.http);
    let auth = format!("Authorization: FlespiToken {}", env.master);
    let run = |args: Vec<String>| tokio::task::spawn_blocking(move || curl(args));
    let Some((body, code)) = run(vec!["-H".into(), auth.clone(), format!("{base}/auth/info")])
        .await
        .expect("joins")
    else {
        eprintln!("curl is not installed: skipped");
        return;
    };
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["result"][0]["cid"], TOP);

    let post = vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        auth.clone(),
        "-d".into(),
        r#"{"topic": "curl/test", "payload": "hi", "retained": true}"#.into(),
        format!("{base}/mqtt/messages"),
    ];
    let (body, code) = run(post).await.expect("joins").expect("curl ran");
    assert_eq!(code, "200", "{body}");
    let get = vec![
        "-H".into(),
        auth,
        "-H".into(),
        "Accept: text/csv".into(),
        format!("{base}/mqtt/messages/curl%2F%23?fields=topic,payload"),
    ];
    let (body, code) = run(get).await.expect("joins").expect("curl ran");
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", "topic,payload\r\ncurl/test,hi\r\n")
    );
    let (body, code) = run(vec![format!("{base}/platform/customer")])
        .await
        .expect("joins")
        .expect("curl ran");
    assert_eq!(code, "401", "{body}");

    // A 10 MiB body: curl gets the 413 envelope.
    let dir = std::env::temp_dir().join(format!("tern-api-curl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("big.json");
    let big = format!(
        r#"{{"topic": "big", "payload": "{}"}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    std::fs::write(&file, big).expect("write");
    let auth = format!("Authorization: FlespiToken {}", env.master);
    let post = vec![
        "-X".into(),
        "POST".into(),
        "-H".into(),
        auth,
        "--data-binary".into(),
        format!("@{}", file.display()),
        format!("{base}/mqtt/messages"),
    ];
    let (body, code) = run(post).await.expect("joins").expect("curl ran");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, "413", "{body}");
    assert!(body.contains("request body larger than"), "{body}");
}
