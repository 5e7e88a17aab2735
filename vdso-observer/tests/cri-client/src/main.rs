//! `cri-client SOCKET run POD NAMESPACE UID IMAGE [CONTAINER=ARG,ARG...]...`
//! makes a pod sandbox as a kubelet would (host network, its own PID and IPC
//! namespaces, cgroup parent `/kubepods/besteffort/pod<UID>`) and starts
//! each container in it from IMAGE with its arguments; prints the sandbox id,
//! then each container's id, one a line.
//! `cri-client SOCKET remove SANDBOX` stops and removes the pod.

use std::{collections::HashMap, error::Error};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{runtime_service_client::RuntimeServiceClient, *};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, command, rest @ ..] = &args[..] else {
        return Err("usage: cri-client SOCKET run|remove ...".into());
    };
    let mut client = RuntimeServiceClient::new(connect(socket.clone()).await?);
    match (command.as_str(), rest) {
        ("run", [pod, namespace, uid, image, containers @ ..]) => {
            let config = sandbox_config(pod, namespace, uid);
            let sandbox = client
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await?
                .into_inner()
                .pod_sandbox_id;
            println!("{sandbox}");
            for container in containers {
                let (name, arguments) = container.split_once('=').ok_or("CONTAINER=ARG,ARG")?;
                let id = client
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: sandbox.clone(),
                        config: Some(ContainerConfig {
                            metadata: Some(ContainerMetadata {
                                name: name.to_owned(),
                                attempt: 0,
                            }),
                            image: Some(ImageSpec {
                                image: image.clone(),
                                ..Default::default()
                            }),
                            args: arguments.split(',').map(str::to_owned).collect(),
                            ..Default::default()
                        }),
                        sandbox_config: Some(config.clone()),
                    })
                    .await?
                    .into_inner()
                    .container_id;
                client
                    .start_container(StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await?;
                println!("{id}");
            }
        }
        ("remove", [sandbox]) => {
            client
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: sandbox.clone(),
                })
                .await?;
            client
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: sandbox.clone(),
                })
                .await?;
        }
        _ => return Err(format!("unknown command {args:?}").into()),
    }
    Ok(())
}

async fn connect(socket: String) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://[::]")
        .connect_with_connector(service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// As a kubelet asks for a BestEffort pod with host networking (no CNI here:
/// the hostname must then be empty).
fn sandbox_config(pod: &str, namespace: &str, uid: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: pod.to_owned(),
            uid: uid.to_owned(),
            namespace: namespace.to_owned(),
            attempt: 0,
        }),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Pod as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        labels: HashMap::new(),
        ..Default::default()
    }
}
