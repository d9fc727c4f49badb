# Rendered by `labctl terraform render` from ../clusters.json. Do not edit: change clusters.json and render again;
# `labctl terraform check` fails while this folder differs from what clusters.json renders.

variable "base_image" {
  type        = string
  description = "image every VM is cloned from; tart: an OCI image, qemu: a local qcow2 or raw disk image file (relative paths are beside clusters.json) or an https:// URL of one, downloaded once into ~/.cache/labctl/images and verified against the publisher's SHA256SUMS"
  default     = "ghcr.io/cirruslabs/ubuntu:latest"
}

variable "ssh_user" {
  type        = string
  description = "the VMs' user with passwordless sudo"
  default     = "admin"
}

variable "ssh_key" {
  type        = string
  description = "first-contact private key file instead of a password"
  default     = null
}

variable "vm_provider" {
  type = object({
    type = string
    tart = object({
      network          = string
      bridge_interface = string
      softnet_allow    = list(string)
      ip_resolver      = string
      ip_wait_seconds  = number
    })
    qemu = object({
      accel            = string
      kernel           = string
      initrd           = string
      append           = string
      cloud_init       = bool
      ssh_port_base    = number
      network          = string
      lab_subnet       = string
      bridge           = string
      leases           = string
      ip_wait_seconds  = number
      ssh_wait_seconds = number
      image_checksums  = string
    })
    orchard = object({
      controller_url     = string
      service_account    = string
      token_env          = string
      ca_cert            = string
      bridge_interface   = string
      labels             = map(string)
      ip_wait_seconds    = number
      start_wait_seconds = number
    })
  })
  description = "the VM provider and its settings"
  default = {
    type = "tart"
    tart = {
      network          = "shared"
      bridge_interface = null
      softnet_allow    = []
      ip_resolver      = "dhcp"
      ip_wait_seconds  = 120
    }
    qemu = {
      accel            = "auto"
      kernel           = null
      initrd           = null
      append           = null
      cloud_init       = true
      ssh_port_base    = 10022
      network          = "user"
      lab_subnet       = "10.213.0.0/24"
      bridge           = "virbr0"
      leases           = null
      ip_wait_seconds  = 180
      ssh_wait_seconds = null
      image_checksums  = null
    }
    orchard = {
      controller_url     = null
      service_account    = null
      token_env          = "ORCHARD_SERVICE_ACCOUNT_TOKEN"
      ca_cert            = null
      bridge_interface   = "en0"
      labels             = {}
      ip_wait_seconds    = 120
      start_wait_seconds = 900
    }
  }
}

variable "versions" {
  type = object({
    kubernetes = string
    containerd = string
    cilium     = string
    helm       = string
  })
  description = "the pinned versions"
  default = {
    kubernetes = "1.35.6"
    containerd = "1.7.28"
    cilium     = "1.19.6"
    helm       = "3.20.2"
  }
}

variable "clusters" {
  type = list(object({
    name         = string
    pod_cidr     = string
    service_cidr = string
    nodes = list(object({
      name   = string
      role   = string
      cpu    = number
      memory = number
      disk   = number
      labels = map(string)
      taints = list(object({
        key    = string
        value  = string
        effect = string
      }))
      provider = string
      address  = string
      ssh_user = string
      ssh_port = number
      ssh_key  = string
    }))
    stacks = list(string)
    cilium = object({
      hubble              = bool
      hubble_ui_node_port = number
      cluster_id          = number
    })
  }))
  description = "the clusters, their nodes and stacks (docs/clusters-json.md)"
  default = [
    {
      name         = "platform"
      pod_cidr     = "10.10.0.0/16"
      service_cidr = "10.96.0.0/16"
      nodes = [
        {
          name     = "platform-master"
          role     = "master"
          cpu      = 2
          memory   = 4096
          disk     = 20
          labels   = {}
          taints   = []
          provider = null
          address  = null
          ssh_user = null
          ssh_port = null
          ssh_key  = null
        },
        {
          name   = "platform-worker1"
          role   = "worker"
          cpu    = 3
          memory = 12288
          disk   = 20
          labels = {
            "node-role.kubernetes.io/worker" = ""
          }
          taints   = []
          provider = null
          address  = null
          ssh_user = null
          ssh_port = null
          ssh_key  = null
        },
        {
          name   = "platform-worker2"
          role   = "worker"
          cpu    = 2
          memory = 8192
          disk   = 20
          labels = {
            "node-role.kubernetes.io/worker" = ""
          }
          taints   = []
          provider = null
          address  = null
          ssh_user = null
          ssh_port = null
          ssh_key  = null
        },
      ]
      stacks = ["rbac", "storage", "metrics-server", "monitoring", "alerting", "argocd", "jenkins", "sealed-secrets", "backup", "registry"]
      cilium = {
        hubble              = true
        hubble_ui_node_port = 31235
        cluster_id          = 1
      }
    },
    {
      name         = "dev"
      pod_cidr     = "10.20.0.0/16"
      service_cidr = "10.97.0.0/16"
      nodes = [
        {
          name     = "dev-master"
          role     = "master"
          cpu      = 2
          memory   = 4096
          disk     = 20
          labels   = {}
          taints   = []
          provider = null
          address  = null
          ssh_user = null
          ssh_port = null
          ssh_key  = null
        },
        {
          name   = "dev-worker1"
          role   = "worker"
          cpu    = 3
          memory = 8192
          disk   = 20
          labels = {
            "node-role.kubernetes.io/worker" = ""
          }
          taints   = []
          provider = null
          address  = null
          ssh_user = null
          ssh_port = null
          ssh_key  = null
        },
      ]
      stacks = ["rbac", "network-policies", "metrics-server", "hpa-demo", "istio", "gatekeeper", "quotas"]
      cilium = {
        hubble              = true
        hubble_ui_node_port = 31235
        cluster_id          = 2
      }
    },
    {
      name         = "staging"
      pod_cidr     = "10.30.0.0/16"
      service_cidr = "10.98.0.0/16"
      nodes = [
        {
          name     = "staging-master"
          role     = "master"
          cpu      = 2
          memory   = 4096
          disk     = 20
          labels   = {}
          taints   = []
          provider = null
          address  = null
          ssh_user = null
          ssh_port = null
          ssh_key  = null
        },
        {
          name   = "staging-worker1"
          role   = "worker"
          cpu    = 2
          memory = 8192
          disk   = 20
          labels = {
            "node-role.kubernetes.io/worker" = ""
          }
          taints   = []
          provider = null
          address  = null
          ssh_user = null
          ssh_port = null
          ssh_key  = null
        },
      ]
      stacks = ["rbac", "metrics-server", "quotas"]
      cilium = {
        hubble              = true
        hubble_ui_node_port = 31235
        cluster_id          = 3
      }
    },
    {
      name         = "prod"
      pod_cidr     = "10.40.0.0/16"
      service_cidr = "10.99.0.0/16"
      nodes = [
        {
          name     = "prod-master"
          role     = "master"
          cpu      = 2
          memory   = 4096
          disk     = 20
          labels   = {}
          taints   = []
          provider = null
          address  = null
          ssh_user = null
          ssh_port = null
          ssh_key  = null
        },
        {
          name   = "prod-worker1"
          role   = "worker"
          cpu    = 2
          memory = 8192
          disk   = 20
          labels = {
            "node-role.kubernetes.io/worker" = ""
          }
          taints   = []
          provider = null
          address  = null
          ssh_user = null
          ssh_port = null
          ssh_key  = null
        },
        {
          name   = "prod-worker2"
          role   = "worker"
          cpu    = 2
          memory = 8192
          disk   = 20
          labels = {
            "node-role.kubernetes.io/worker" = ""
          }
          taints   = []
          provider = null
          address  = null
          ssh_user = null
          ssh_port = null
          ssh_key  = null
        },
      ]
      stacks = ["rbac", "metrics-server", "quotas"]
      cilium = {
        hubble              = true
        hubble_ui_node_port = 31235
        cluster_id          = 4
      }
    },
  ]
}

variable "ssh_password" {
  type        = string
  description = "First-contact SSH password, over clusters.json's; given to labctl as LABCTL_SSH_PASSWORD. Set it with TF_VAR_ssh_password, never in a file."
  sensitive   = true
  nullable    = true
  default     = null
}
