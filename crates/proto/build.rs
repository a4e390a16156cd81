//! Compiles `proto/*.proto` with protox (a protobuf compiler written in Rust), so building
//! Tandem needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/db.proto", "proto/confserv.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Status and data messages are printed as JSON by the command line.
        .type_attribute(".tandem.db.v1.StatusResponse", "#[derive(serde::Serialize)]")
        .type_attribute(".tandem.db.v1.ReplicaStatus", "#[derive(serde::Serialize)]")
        .type_attribute(".tandem.db.v1.CheckpointCounts", "#[derive(serde::Serialize)]")
        .type_attribute(".tandem.db.v1.Member", "#[derive(serde::Serialize)]")
        .type_attribute(".tandem.db.v1.KeyValue", "#[derive(serde::Serialize)]")
        .type_attribute(".tandem.db.v1.Event", "#[derive(serde::Serialize)]")
        .type_attribute(".tandem.db.v1.RecoverResponse", "#[derive(serde::Serialize)]")
        .type_attribute(".tandem.db.v1.RejoinResponse", "#[derive(serde::Serialize)]")
        .type_attribute(".tandem.confserv.v1.StatusResponse", "#[derive(serde::Serialize)]")
        .type_attribute(".tandem.confserv.v1.Notification", "#[derive(serde::Serialize)]")
        .type_attribute(".tandem.confserv.v1.ObjectKey", "#[derive(serde::Serialize)]")
        // Keeps the event small beside its other kinds.
        .boxed(".tandem.confserv.v1.SubscriptionEvent.event.notification")
        .compile_fds(descriptors)?;
    Ok(())
}
