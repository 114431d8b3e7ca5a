//! `/gw/channel-protocols` (docs/flespi.md#devices) over real sockets, called exactly as the
//! devices-creation-tool, TrackIt and the Toolbox call it.

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn channel_protocols_as_the_example_tools_call_them() {
    let env = Env::start().await;
    let key = env.token(json!({})).await;
    let get = |path: &'static str| {
        let env = &env;
        let key = key.clone();
        async move { env.call("GET", path, Some(&key), &[], None).await }
    };

    // devices-creation-tool.
    let r = get(
        "/gw/channel-protocols/all/device-types/all?fields=id,protocol_id,protocol_name,title,configuration",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let types = r.result();
    assert_eq!(types.len(), tern_gw::types::DEVICE_TYPES.len());
    for t in &types {
        let keys: Vec<&String> = t.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 5, "only the asked fields: {t}");
        assert!(t["title"].is_string());
        assert!(
            t["configuration"]["properties"]["ident"]["pattern"].is_string(),
            "{t}"
        );
    }
    assert_eq!(types[0]["id"], 1);
    assert_eq!(types[0]["protocol_name"], "http");
    assert_eq!(types[1]["protocol_id"], 2);

    // TrackIt and the Toolbox, for a device of type 2.
    let r = get("/gw/channel-protocols/all/device-types/2?fields=protocol_id").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"result": [{"protocol_id": 2}]}));
    let r = get("/gw/channel-protocols/2?fields=message_parameters").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let items = r.result();
    assert_eq!(items.len(), 1);
    let params = items[0]["message_parameters"].as_array().expect("array");
    assert!(params.iter().all(|p| p["name"].is_string()
        && p["type"].is_string()
        && p["unit"].is_string()
        && p["info"].is_string()));
    assert!(params.iter().any(|p| p["name"] == "ident"));

    // Every protocol, selectors, and the device types of one.
    let r = get("/gw/channel-protocols/all").await;
    let names: Vec<Value> = r.result().iter().map(|p| p["name"].clone()).collect();
    assert_eq!(
        names,
        vec![json!("http"), json!("mqtt"), json!("teltonika")]
    );
    for p in r.result() {
        // JSON channels read the ident from a field; Teltonika ones from the handshake.
        if p["name"] == "teltonika" {
            assert!(p["configuration"]["properties"]["port"].is_object());
        } else {
            assert!(p["configuration"]["properties"]["ident"]["pattern"].is_string());
        }
        assert!(p["message_parameters"].is_array());
    }
    let r = get("/gw/channel-protocols/name=mqtt?fields=id").await;
    assert_eq!(r.json(), json!({"result": [{"id": 2}]}));
    let r = get("/gw/channel-protocols/1/device-types/all?fields=id,name").await;
    assert_eq!(r.json(), json!({"result": [{"id": 1, "name": "http"}]}));
    let r = get("/gw/channel-protocols/1/device-types/2").await;
    assert_eq!(r.json(), json!({"result": []}));
    let r = get("/gw/channel-protocols/9").await;
    assert_eq!(r.json(), json!({"result": []}));

    // A device's protocol_id derives from the same list.
    let r = env
        .master(
            "POST",
            "/gw/devices",
            Some(json!({"name": "d", "device_type_id": 2, "configuration": {"ident": "p1"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.result()[0]["protocol_id"], 2);

    // A token is needed, as for every /gw call.
    let r = env
        .call("GET", "/gw/channel-protocols/all", None, &[], None)
        .await;
    assert_eq!(r.status, 401);
}
